"""The environment variables boto3 needs from the user's (or CI runner's) environment, which the
plugin hands the tools' processes (push, publish, deploy): Pants runs processes with a clean
environment, so a credential mechanism missing here fails only in the CI that uses it.

Every mechanism CI runners use: static keys, profiles and their files, OIDC web identity
(GitHub Actions, EKS service accounts), container credentials (ECS tasks, CodeBuild, EKS Pod
Identity), and the TLS and endpoint settings of networks with their own CA.
"""

AWS_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CREDENTIAL_FILE", "AWS_ACCOUNT_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)
AWS_SETTINGS_ENV = (
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE", "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_EC2_METADATA_DISABLED", "AWS_USE_FIPS_ENDPOINT", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
)
AWS_ENV = AWS_CREDENTIAL_ENV + AWS_SETTINGS_ENV
# Of those, the secrets: no persistently cached process may have them in its environment.
AWS_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                  "AWS_CONTAINER_AUTHORIZATION_TOKEN")
