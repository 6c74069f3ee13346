"""index products.name and seed the default categories

Revision ID: c4d18f3e6b72
Revises: 5c7e0b9d2a14
Create Date: 2024-05-08 09:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "c4d18f3e6b72"
down_revision = "5c7e0b9d2a14"
branch_labels = None
depends_on = None

# A lightweight table construct: a migration must not import the
# application's models, which describe the *latest* schema only.
categories = sa.table(
    "categories",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String(100)),
)

SEED_CATEGORIES = ["Books", "Electronics", "Garden"]


def upgrade() -> None:
    with op.batch_alter_table("products") as batch_op:
        batch_op.create_index("ix_products_name", ["name"], unique=False)

    # Data migration: ids are left to the database so that sequences /
    # auto-increment counters stay consistent on every backend.
    op.bulk_insert(categories, [{"name": name} for name in SEED_CATEGORIES])


def downgrade() -> None:
    # Detach products from the seeded categories before removing them so the
    # foreign key is not violated.
    products = sa.table(
        "products",
        sa.column("category_id", sa.Integer),
    )
    seeded_ids = sa.select(categories.c.id).where(
        categories.c.name.in_(SEED_CATEGORIES)
    )
    op.execute(
        sa.update(products)
        .where(products.c.category_id.in_(seeded_ids))
        .values(category_id=None)
    )
    op.execute(
        sa.delete(categories).where(categories.c.name.in_(SEED_CATEGORIES))
    )

    with op.batch_alter_table("products") as batch_op:
        batch_op.drop_index("ix_products_name")
