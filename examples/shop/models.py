"""SQLAlchemy models for the bundled "shop" example.

The shop is split into three independent databases, each with its own
:class:`~sqlalchemy.MetaData` and its own Alembic migration history:

* ``users_metadata``   -> ``versions/users/``   (users, api_keys)
* ``catalog_metadata`` -> ``versions/catalog/`` (categories, products)
* ``orders_metadata``  -> ``versions/orders/``  (orders, order_lines)

There are deliberately no foreign keys across databases: orders refer to
users and products by plain integer ids.

Every MetaData uses the same naming convention so that constraint and index
names are deterministic and identical on SQLite, PostgreSQL and MariaDB/MySQL;
the migration scripts use exactly these names.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

users_metadata = MetaData(naming_convention=NAMING_CONVENTION)
catalog_metadata = MetaData(naming_convention=NAMING_CONVENTION)
orders_metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --------------------------------------------------------------------------
# users database
# --------------------------------------------------------------------------


class UsersBase(DeclarativeBase):
    metadata = users_metadata


class User(UsersBase):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(), server_default=func.now()
    )
    is_active: Mapped[bool] = mapped_column(
        Boolean(), default=True, server_default=true()
    )

    api_keys: Mapped[list[ApiKey]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )


class ApiKey(UsersBase):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE")
    )
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    label: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(), server_default=func.now()
    )

    user: Mapped[User] = relationship(back_populates="api_keys")


# --------------------------------------------------------------------------
# catalog database
# --------------------------------------------------------------------------


class CatalogBase(DeclarativeBase):
    metadata = catalog_metadata


class Category(CatalogBase):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)

    products: Mapped[list[Product]] = relationship(back_populates="category")


class Product(CatalogBase):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    category_id: Mapped[int | None] = mapped_column(
        ForeignKey("categories.id")
    )
    price_cents: Mapped[int] = mapped_column(Integer)

    category: Mapped[Category | None] = relationship(back_populates="products")


# --------------------------------------------------------------------------
# orders database
# --------------------------------------------------------------------------


class OrdersBase(DeclarativeBase):
    metadata = orders_metadata


class Order(OrdersBase):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Refers to users.id in the *users* database: no foreign key.
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(20))
    total_cents: Mapped[int] = mapped_column(
        Integer, default=0, server_default="0"
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(), server_default=func.now()
    )

    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", cascade="all, delete-orphan"
    )


class OrderLine(OrdersBase):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE")
    )
    # Refers to products.id in the *catalog* database: no foreign key.
    product_id: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(Integer)

    order: Mapped[Order] = relationship(back_populates="lines")


__all__ = [
    "NAMING_CONVENTION",
    "users_metadata",
    "catalog_metadata",
    "orders_metadata",
    "UsersBase",
    "User",
    "ApiKey",
    "CatalogBase",
    "Category",
    "Product",
    "OrdersBase",
    "Order",
    "OrderLine",
]
