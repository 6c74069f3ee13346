"""The benchmark's migration history: 40 linear revisions of a small multi-tenant SaaS schema.

Realistic operations that run on SQLite, PostgreSQL and MariaDB, online and offline
(two data migrations concatenate with CONCAT() on MariaDB, || elsewhere):
tables with foreign keys, indexes (plain, unique, composite), columns added, altered,
renamed and dropped, a CHECK constraint, a table rename, and data migrations (seed rows
with ``op.bulk_insert``, ``INSERT ... SELECT``, ``UPDATE``).

Alters go through ``op.batch_alter_table`` (SQLite can only ALTER that way: it copies
the table). Offline (``--sql``) there is no database to reflect, so each batch that
recreates a table on SQLite passes ``copy_from=`` the table as it is at that point
(Alembic's documented recipe for batch mode offline); online it reflects, as usual.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

# (message, body of upgrade(), extra module-level code)
# Bodies are written at 4-space indentation inside upgrade().
_T = "sa.text('CURRENT_TIMESTAMP')"

REVISIONS: list[tuple[str, str, str]] = [
    (
        "create accounts",
        f"""
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(), server_default={_T}, nullable=False),
    )
""",
        "",
    ),
    ("unique index on accounts.email", """
    op.create_index("ix_accounts_email", "accounts", ["email"], unique=True)
""", ""),
    ("create users", """
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("username", sa.String(50), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("status", sa.String(20), nullable=True),
    )
""", ""),
    ("index users.account_id", """
    op.create_index("ix_users_account_id", "users", ["account_id"])
""", ""),
    ("seed accounts and users", """
    accounts = sa.table("accounts", sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("email", sa.String))
    users = sa.table(
        "users", sa.column("id", sa.Integer), sa.column("account_id", sa.Integer), sa.column("username", sa.String),
        sa.column("email", sa.String), sa.column("status", sa.String),
    )
    op.bulk_insert(accounts, [
        {"id": i, "name": f"Account {i}", "email": f"billing{i}@example.{'de' if i % 3 == 0 else 'com'}"}
        for i in range(1, 9)
    ])
    op.bulk_insert(users, [
        {"id": i, "account_id": (i - 1) // 2 + 1, "username": f"user{i}", "email": f"user{i}@example.com",
         "status": None if i % 4 == 0 else "active"}
        for i in range(1, 17)
    ])
""", ""),
    ("create projects", """
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
    )
""", ""),
    ("users.last_login", """
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("last_login", sa.DateTime(), nullable=True))
""", ""),
    ("create tasks", """
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("done", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=True),
    )
""", ""),
    ("index tasks (project_id, done)", """
    op.create_index("ix_tasks_project_done", "tasks", ["project_id", "done"])
""", ""),
    ("a default project per account (data)", """
    mysql = op.get_context().dialect.name == "mysql"  # MariaDB/MySQL concatenate with CONCAT(), not ||
    named = "CONCAT(name, ' main')" if mysql else "name || ' main'"
    op.execute(
        "INSERT INTO projects (account_id, name, description) "
        f"SELECT id, {named}, 'default project' FROM accounts"
    )
""", ""),
    ("users.status not null, default active", """
    op.execute("UPDATE users SET status = 'active' WHERE status IS NULL")
    with op.batch_alter_table("users", copy_from=_users() if context.is_offline_mode() else None) as batch_op:
        batch_op.alter_column(
            "status", existing_type=sa.String(20), nullable=False, server_default="active"
        )
""", """

def _users() -> sa.Table:
    metadata = sa.MetaData()
    sa.Table("accounts", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    return sa.Table(
        "users", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("username", sa.String(50), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("status", sa.String(20), nullable=True),
        sa.Column("last_login", sa.DateTime(), nullable=True),
        sa.Index("ix_users_account_id", "account_id"),
    )
"""),
    ("accounts.plan", """
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.add_column(sa.Column("plan", sa.String(20), server_default="free", nullable=False))
""", ""),
    ("accounts with several users are pro (data)", """
    op.execute(
        "UPDATE accounts SET plan = 'pro' WHERE id IN "
        "(SELECT account_id FROM users GROUP BY account_id HAVING count(*) > 1)"
    )
""", ""),
    ("create tags", """
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
        sa.UniqueConstraint("name", name="uq_tags_name"),
    )
""", ""),
    ("create task_tags", """
    op.create_table(
        "task_tags",
        sa.Column("task_id", sa.Integer(), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("tag_id", sa.Integer(), sa.ForeignKey("tags.id"), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "tag_id", name="pk_task_tags"),
    )
""", ""),
    ("index task_tags.tag_id", """
    op.create_index("ix_task_tags_tag_id", "task_tags", ["tag_id"])
""", ""),
    ("tasks.due_date, drop tasks.priority", """
    with op.batch_alter_table("tasks", copy_from=_tasks() if context.is_offline_mode() else None) as batch_op:
        batch_op.add_column(sa.Column("due_date", sa.Date(), nullable=True))
        batch_op.drop_column("priority")
""", """

def _tasks() -> sa.Table:
    metadata = sa.MetaData()
    sa.Table("projects", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    return sa.Table(
        "tasks", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("done", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Index("ix_tasks_project_done", "project_id", "done"),
    )
"""),
    ("kick-off tasks and tags (data)", """
    mysql = op.get_context().dialect.name == "mysql"  # MariaDB/MySQL concatenate with CONCAT(), not ||
    title = "CONCAT('Kick-off for ', name)" if mysql else "'Kick-off for ' || name"
    op.execute(
        f"INSERT INTO tasks (project_id, title) SELECT id, {title} FROM projects"
    )
    tags = sa.table("tags", sa.column("id", sa.Integer), sa.column("name", sa.String))
    op.bulk_insert(tags, [{"id": 1, "name": "urgent"}, {"id": 2, "name": "later"}, {"id": 3, "name": "billing"}])
    op.execute("INSERT INTO task_tags (task_id, tag_id) SELECT id, 2 FROM tasks")
""", ""),
    ("create comments", f"""
    op.create_table(
        "comments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("task_id", sa.Integer(), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default={_T}, nullable=False),
    )
""", ""),
    ("index comments.task_id", """
    op.create_index("ix_comments_task_id", "comments", ["task_id"])
""", ""),
    ("projects.name up to 200 characters", """
    with op.batch_alter_table("projects", copy_from=_projects(100) if context.is_offline_mode() else None) as batch_op:
        batch_op.alter_column("name", existing_type=sa.String(100), type_=sa.String(200), existing_nullable=False)
""", """

def _projects(name_length: int) -> sa.Table:
    metadata = sa.MetaData()
    sa.Table("accounts", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    return sa.Table(
        "projects", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(name_length), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
    )
"""),
    ("projects.archived", """
    with op.batch_alter_table("projects", copy_from=_projects(200) if context.is_offline_mode() else None) as batch_op:
        batch_op.add_column(sa.Column("archived", sa.Boolean(), server_default=sa.false(), nullable=False))
""", """

def _projects(name_length: int) -> sa.Table:
    metadata = sa.MetaData()
    sa.Table("accounts", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    return sa.Table(
        "projects", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(name_length), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
    )
"""),
    ("archive the projects of free accounts (data)", """
    op.execute(
        "UPDATE projects SET archived = true WHERE account_id IN (SELECT id FROM accounts WHERE plan = 'free')"
    )
""", ""),
    ("create audit_log", f"""
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(), server_default={_T}, nullable=False),
    )
""", ""),
    ("index audit_log (account_id, at)", """
    op.create_index("ix_audit_log_account_at", "audit_log", ["account_id", "at"])
""", ""),
    ("rename users.username to login", """
    with op.batch_alter_table("users", copy_from=_users() if context.is_offline_mode() else None) as batch_op:
        batch_op.alter_column("username", new_column_name="login", existing_type=sa.String(50), existing_nullable=False)
""", """

def _users() -> sa.Table:
    metadata = sa.MetaData()
    sa.Table("accounts", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    return sa.Table(
        "users", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("username", sa.String(50), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("status", sa.String(20), server_default="active", nullable=False),
        sa.Column("last_login", sa.DateTime(), nullable=True),
        sa.Index("ix_users_account_id", "account_id"),
    )
"""),
    ("index users (account_id, status) replaces users.account_id", """
    # The new index first: MariaDB refuses to drop the only index its foreign key can use.
    op.create_index("ix_users_account_status", "users", ["account_id", "status"])
    op.drop_index("ix_users_account_id", table_name="users")
""", ""),
    ("audit the plans (data)", """
    op.execute(
        "INSERT INTO audit_log (account_id, action, payload) SELECT id, 'plan_assigned', plan FROM accounts"
    )
""", ""),
    ("create invoices", """
    op.create_table(
        "invoices",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(3), server_default="EUR", nullable=False),
        sa.Column("issued_at", sa.Date(), nullable=True),
    )
""", ""),
    ("index invoices.account_id", """
    op.create_index("ix_invoices_account_id", "invoices", ["account_id"])
""", ""),
    ("invoices.amount_cents is never negative", """
    with op.batch_alter_table("invoices", copy_from=_invoices() if context.is_offline_mode() else None) as batch_op:
        batch_op.create_check_constraint("ck_invoices_amount_cents", "amount_cents >= 0")
""", """

def _invoices() -> sa.Table:
    metadata = sa.MetaData()
    sa.Table("accounts", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    return sa.Table(
        "invoices", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(3), server_default="EUR", nullable=False),
        sa.Column("issued_at", sa.Date(), nullable=True),
        sa.Index("ix_invoices_account_id", "account_id"),
    )
"""),
    ("opening invoices for pro accounts (data)", """
    op.execute(
        "INSERT INTO invoices (account_id, amount_cents, currency) "
        "SELECT id, 1000 * id, 'EUR' FROM accounts WHERE plan = 'pro'"
    )
    invoices = sa.table(
        "invoices", sa.column("account_id", sa.Integer), sa.column("amount_cents", sa.Integer),
        sa.column("currency", sa.String),
    )
    op.bulk_insert(invoices, [{"account_id": 1, "amount_cents": 0, "currency": "USD"},
                              {"account_id": 2, "amount_cents": 4200, "currency": "GBP"}])
""", ""),
    ("accounts.country", """
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.add_column(sa.Column("country", sa.String(2), nullable=True))
""", ""),
    ("country from the billing address (data)", """
    op.execute("UPDATE accounts SET country = 'DE' WHERE email LIKE '%.de'")
    op.execute("UPDATE accounts SET country = 'US' WHERE country IS NULL")
""", ""),
    ("accounts.email is required", """
    with op.batch_alter_table("accounts", copy_from=_accounts() if context.is_offline_mode() else None) as batch_op:
        batch_op.alter_column("email", existing_type=sa.String(255), nullable=False)
""", f"""

def _accounts() -> sa.Table:
    return sa.Table(
        "accounts", sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(), server_default={_T}, nullable=False),
        sa.Column("plan", sa.String(20), server_default="free", nullable=False),
        sa.Column("country", sa.String(2), nullable=True),
        sa.Index("ix_accounts_email", "email", unique=True),
    )
"""),
    ("create settings, with a theme per account", """
    op.create_table(
        "settings",
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("setting", sa.String(50), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("account_id", "setting", name="pk_settings"),
    )
    op.execute("INSERT INTO settings (account_id, setting, value) SELECT id, 'theme', 'light' FROM accounts")
""", ""),
    ("rename audit_log to events", """
    op.rename_table("audit_log", "events")
""", ""),
    ("tasks.status, filled from tasks.done", """
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(20), server_default="open", nullable=False))
    op.execute("UPDATE tasks SET status = 'done' WHERE done = true")
""", ""),
    ("drop tasks.done", """
    with op.batch_alter_table("tasks", copy_from=_tasks() if context.is_offline_mode() else None) as batch_op:
        # An index of its own for the foreign key first: MariaDB refuses to drop the one it uses.
        batch_op.create_index("ix_tasks_project_id", ["project_id"])
        batch_op.drop_index("ix_tasks_project_done")
        batch_op.drop_column("done")
""", """

def _tasks() -> sa.Table:
    metadata = sa.MetaData()
    sa.Table("projects", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    return sa.Table(
        "tasks", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("done", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("status", sa.String(20), server_default="open", nullable=False),
        sa.Index("ix_tasks_project_done", "project_id", "done"),
    )
"""),
    ("index tasks (status, project_id); close archived projects' tasks (data)", """
    op.create_index("ix_tasks_status_project", "tasks", ["status", "project_id"])
    op.execute(
        "UPDATE tasks SET status = 'closed' WHERE project_id IN (SELECT id FROM projects WHERE archived = true)"
    )
""", ""),
]

assert len(REVISIONS) == 40, len(REVISIONS)

_FILE = '''"""{message}

Revision ID: {revision}
Revises: {down}
Create Date: 2024-01-{day:02d} 12:00:00.000000

"""
from __future__ import annotations

from typing import Sequence, Union

from alembic import context, op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = {revision!r}
down_revision: Union[str, Sequence[str], None] = {down_revision!r}
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:{body}

def downgrade() -> None:
    raise NotImplementedError("the benchmark only upgrades")
{extra}'''


def revision_id(index: int) -> str:
    return hashlib.sha1(f"orchestrate-bench-{index}".encode()).hexdigest()[:12]


HEAD = revision_id(len(REVISIONS))


def write_history(folder: Path) -> list[str]:
    """Write the 40 revision files into ``folder``; returns the revision ids, base first."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    down = None
    for index, (message, body, extra) in enumerate(REVISIONS, start=1):
        rev = revision_id(index)
        slug = "_".join("".join(c if c.isalnum() else " " for c in message.lower()).split())[:40]
        (folder / f"{index:02d}_{rev}_{slug}.py").write_text(
            _FILE.format(
                message=message, revision=rev, down=down or "", down_revision=down, day=index % 28 + 1,
                body=body.rstrip() + "\n", extra=extra,
            ),
            encoding="utf-8",
        )
        ids.append(rev)
        down = rev
    return ids
