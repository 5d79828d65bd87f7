"""Launch templates in the local AWS keep and show ``EnclaveOptions`` (an enclave fleet's instances), which ministack
dropped, beside the settings it kept."""

from __future__ import annotations

import pytest
from local_aws_fixtures import LocalAws

pytestmark = pytest.mark.integration


def test_a_launch_templates_enclave_options_are_kept_beside_its_other_settings(local_aws: LocalAws) -> None:
    ec2 = local_aws.client("ec2")
    data = {
        "ImageId": "ami-0123456789abcdef0",
        "InstanceType": "m5.xlarge",
        "EnclaveOptions": {"Enabled": True},
        "IamInstanceProfile": {"Name": "enclave-instance"},
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
    }
    made = ec2.create_launch_template(LaunchTemplateName="enclave-fleet", LaunchTemplateData=data)["LaunchTemplate"]
    (version,) = ec2.describe_launch_template_versions(LaunchTemplateId=made["LaunchTemplateId"])[
        "LaunchTemplateVersions"
    ]
    shown = version["LaunchTemplateData"]
    assert shown["EnclaveOptions"] == {"Enabled": True}
    assert shown["IamInstanceProfile"] == {"Name": "enclave-instance"}
    assert shown["MetadataOptions"]["HttpTokens"] == "required"
    assert shown["ImageId"] == "ami-0123456789abcdef0"

    plain = ec2.create_launch_template(LaunchTemplateName="plain", LaunchTemplateData={"ImageId": "ami-0a"})
    (version,) = ec2.describe_launch_template_versions(LaunchTemplateId=plain["LaunchTemplate"]["LaunchTemplateId"])[
        "LaunchTemplateVersions"
    ]
    assert "EnclaveOptions" not in version["LaunchTemplateData"]
