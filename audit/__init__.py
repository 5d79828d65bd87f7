"""The auditor's role: a report of what ran, from the services' own records, without any data."""
