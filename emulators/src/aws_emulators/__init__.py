"""Local emulations of the AWS services the product needs and the local AWS lacks: they serve the services' own
APIs, answer with their refusals, and never import the code they host."""
