"""add orders.total_cents and backfill it from order_lines

Revision ID: b92f4d06c1e8
Revises: 7a3c5e81b9d0
Create Date: 2024-05-10 10:00:00.000000

Three steps, so that existing orders get a correct total:

1. add ``total_cents`` as a nullable column;
2. data migration: set it to ``SUM(quantity * unit_price_cents)`` of the
   order's lines (0 for an order without lines);
3. make it NOT NULL with a server default of ``0``.

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "b92f4d06c1e8"
down_revision = "7a3c5e81b9d0"
branch_labels = None
depends_on = None

# Lightweight table constructs describing only what this migration touches.
orders = sa.table(
    "orders",
    sa.column("id", sa.Integer),
    sa.column("total_cents", sa.Integer),
)
order_lines = sa.table(
    "order_lines",
    sa.column("order_id", sa.Integer),
    sa.column("quantity", sa.Integer),
    sa.column("unit_price_cents", sa.Integer),
)


def upgrade() -> None:
    # 1. Nullable first: existing rows get NULL.
    with op.batch_alter_table("orders") as batch_op:
        batch_op.add_column(sa.Column("total_cents", sa.Integer(), nullable=True))

    # 2. Backfill with a correlated subquery (portable to SQLite, PostgreSQL
    #    and MariaDB/MySQL):
    #    UPDATE orders SET total_cents = (
    #        SELECT COALESCE(SUM(quantity * unit_price_cents), 0)
    #        FROM order_lines WHERE order_lines.order_id = orders.id)
    line_total = (
        sa.select(
            sa.func.coalesce(
                sa.func.sum(
                    order_lines.c.quantity * order_lines.c.unit_price_cents
                ),
                0,
            )
        )
        .where(order_lines.c.order_id == orders.c.id)
        .correlate(orders)
        .scalar_subquery()
    )
    op.execute(sa.update(orders).values(total_cents=line_total))

    # 3. Now every row has a value: tighten the column.
    with op.batch_alter_table("orders") as batch_op:
        batch_op.alter_column(
            "total_cents",
            existing_type=sa.Integer(),
            nullable=False,
            server_default="0",
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_column("total_cents")
