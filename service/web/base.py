"""What handlers share (Datasette's views/base.py): policies every page and API applies alike."""

from __future__ import annotations

from ..config import Settings
from ..store.users import User, normalise_email


def is_operator(settings: Settings, user: User) -> bool:
    """Listed in AGNES_ADMIN_EMAILS."""
    return user.email in {normalise_email(e) for e in settings.admin_emails}


def shows_cost(settings: Settings, user: User) -> bool:
    """Analysts see estimated cost unless the operator switched it off; operators always do."""
    return settings.show_cost or is_operator(settings, user)
