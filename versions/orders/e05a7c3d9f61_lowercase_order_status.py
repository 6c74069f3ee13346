"""normalise orders.status to lowercase

Revision ID: e05a7c3d9f61
Revises: b92f4d06c1e8
Create Date: 2024-05-15 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "e05a7c3d9f61"
down_revision = "b92f4d06c1e8"
branch_labels = None
depends_on = None

orders = sa.table(
    "orders",
    sa.column("status", sa.String(20)),
)


def upgrade() -> None:
    # Data migration only: "PAID", "Paid" -> "paid".  No WHERE clause on
    # purpose: with MariaDB/MySQL's default case-insensitive collations a
    # filter such as ``status != lower(status)`` would never match.
    op.execute(
        sa.update(orders).values(status=sa.func.lower(orders.c.status))
    )


def downgrade() -> None:
    # Intentionally a no-op: the original casing is not recorded anywhere, and
    # lowercase status values are valid for the previous revision as well.
    pass
