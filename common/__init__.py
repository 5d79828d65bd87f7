"""What every role shares: S3 addresses, AWS clients, the versions record, the preprocessing record, archives.

Nothing here imports concrete-ml, so the Lambdas can import it too.
"""
