from apps.core.exceptions import ApplicationError


class AuthenticationFailed(ApplicationError):
    """Wrong credentials. One message for every cause: no hint whether the account exists."""

    code = "authentication_failed"
    status_code = 401

    def __init__(self) -> None:
        super().__init__("Invalid email or password.")


class LockedOut(AuthenticationFailed):
    """Too many failures for this login name or from this address; nothing was checked.

    The message adds nothing about the account or the password, only when to try again.
    """

    code = "locked_out"
    status_code = 429

    def __init__(self, *, retry_after: int) -> None:
        super().__init__()
        self.message = f"{self.message} Too many attempts; try again later."
        self.args = (self.message,)
        self.retry_after = retry_after
