from apps.core.exceptions import ApplicationError


class AuthenticationFailed(ApplicationError):
    """Wrong credentials. One message for every cause: no hint whether the account exists."""

    code = "authentication_failed"
    status_code = 401

    def __init__(self) -> None:
        super().__init__("Invalid email or password.")
