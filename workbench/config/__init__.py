"""Run parameters: the schema, how layers of YAML and --set combine, where the project lives."""
