"""A job that reaches a final status (done, failed) is announced on the `job_finished` channel
(NOTIFY, payload: the job id), whichever process finished it: the gateway's long polls
(`GET /v1/jobs/{id}?wait=S`) wake on it instead of polling. NOTIFY is sent at commit, so a woken
reader always sees the final row. The channel name is `moodtunes.jobs.FINISHED_CHANNEL`.

Revision ID: 0007
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """CREATE FUNCTION jobs_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               PERFORM pg_notify('job_finished', NEW.id::text);
               RETURN NULL;
           END $$"""
    )
    op.execute(
        """CREATE TRIGGER jobs_finished AFTER UPDATE OF status ON jobs FOR EACH ROW
           WHEN (NEW.status IN ('done', 'failed') AND OLD.status IS DISTINCT FROM NEW.status)
           EXECUTE FUNCTION jobs_notify_finished()"""
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_finished ON jobs")
    op.execute("DROP FUNCTION IF EXISTS jobs_notify_finished()")
