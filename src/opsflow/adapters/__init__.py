"""The only code that talks to the outside world: PostgreSQL, S3, mail, SMS, crypto, dbt."""
