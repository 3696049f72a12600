"""The marketing database: campaigns."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.db import Resource, make_base

# Typed as Any: mypy cannot follow a class made at run time (make_base gives each service its own metadata).
Base: Any = make_base()


class Campaign(Base, Resource):
    __tablename__ = "campaigns"

    name: Mapped[str] = mapped_column(String(255), nullable=False)
    channel: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    # Exact decimal text ("5000.00"): SQLite has no exact decimal type.
    budget: Mapped[str] = mapped_column(String(32), nullable=False, default="0.00")
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    # YYYY-MM-DD, or "" when not set; ISO dates compare correctly as text.
    start_date: Mapped[str] = mapped_column(String(10), nullable=False, default="")
    end_date: Mapped[str] = mapped_column(String(10), nullable=False, default="")
