-- The lifecycle-event relay's round (store/outbox.py, EventOutboxRelay) in two statements instead of
-- five. It was BEGIN, the relays' advisory lock, the read, the delete and COMMIT, each a round trip
-- and a wake-up of the relay and of its Postgres backend; below saturation a scheduler makes a round
-- per batch. The relays of every scheduler replica still take turns: each holds a session advisory
-- lock from its take to its release, so one relay at a time publishes, oldest row first.

-- Take the relays' lock (waiting while another relay holds it), then read the oldest rows. Each row is
-- locked while it is read: a row the previous holder deleted, in a release not yet committed, is waited
-- for and then skipped, never published twice. With no row to publish the lock is given back at once.
CREATE FUNCTION event_outbox_take(lock_key bigint, max_rows integer)
RETURNS TABLE (id bigint, subjects text[], payloads bytea[], msg_ids text[], age double precision)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- Its only writes are the row locks: no need to wait for the WAL flush when the statement commits.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_lock(lock_key);
    -- A statement of its own, so it reads what the previous holder committed (a fresh snapshot).
    RETURN QUERY
        SELECT e.id, e.subjects, e.payloads, e.msg_ids,
               extract(epoch FROM clock_timestamp() - e.created_at)::float8
        FROM event_outbox e ORDER BY e.id LIMIT max_rows FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pg_advisory_unlock(lock_key);
    END IF;
END $$;

-- After the PubAcks: delete the published rows and give the lock back. The delete commits without
-- waiting for the WAL flush (as the outbox's own deletes do): one lost to a Postgres crash leaves rows
-- that are published again under their message ids and dropped as copies.
CREATE FUNCTION event_outbox_release(lock_key bigint, published bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    DELETE FROM event_outbox WHERE id = ANY(published);
    PERFORM pg_advisory_unlock(lock_key);
END $$;
