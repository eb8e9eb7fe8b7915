-- dlock's schema for PostgreSQL: what `dlock::postgres::migrate` runs (idempotent).
-- One row per holder of a lock (a semaphore of N has up to N rows under one key); the lock is
-- the row, never session state, so it survives pooled connections and PgBouncer.

-- Fencing tokens: one sequence for every key, so they strictly increase per key. A sequence
-- never goes back across crashes and restarts for any value a committed transaction used.
CREATE SEQUENCE IF NOT EXISTS dlock_fence;

CREATE TABLE IF NOT EXISTS dlock_locks (
    key     text        NOT NULL,          -- the storage key: prefix + the user's key
    token   text        NOT NULL,          -- the acquisition's ULID
    fence   bigint      NOT NULL,          -- its fencing token (0 for a bar, see below)
    permits integer     NOT NULL,          -- the semaphore's N (1: a lock; 0: a bar)
    expires timestamptz NOT NULL,          -- by the server's clock
    value   bytea,                         -- what the holder publishes (an election's leader)
    waited  boolean     NOT NULL DEFAULT false, -- someone listens for this key's release
    PRIMARY KEY (key, token)
);
CREATE INDEX IF NOT EXISTS dlock_locks_expires ON dlock_locks (expires);

-- One acquire attempt: > 0 the fencing token of the new holder row, 0 busy, < 0 the other N
-- of a semaphore that holds the key. See `src/backend/postgres/mod.rs` for why N + 1 can
-- never hold: the advisory lock serialises attempts on a key, and each statement below
-- takes a fresh snapshot after it was granted.
-- Its reads of a key's rows are plain index scans (bitmap scans are off in it): each
-- acquisition leaves a dead index entry under its key once released, and only a plain
-- index scan marks such entries dead for the scans after it, where a bitmap scan would
-- walk every past acquisition of the key again until a vacuum.
CREATE OR REPLACE FUNCTION dlock_acquire(
    p_key text, p_token text, p_ttl_ms bigint, p_permits integer, p_value bytea,
    p_announce boolean
) RETURNS bigint LANGUAGE plpgsql VOLATILE SET enable_bitmapscan = off AS $$
DECLARE
    v_fence   bigint;
    v_permits integer;
    v_live    integer;
    v_other   integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1684823915, hashtext(p_key));
    -- The same acquisition again (a resent attempt), or one barred by its undo.
    SELECT fence, permits INTO v_fence, v_permits FROM dlock_locks
        WHERE key = p_key AND token = p_token AND expires > now();
    IF FOUND THEN
        RETURN CASE WHEN v_permits = 0 THEN 0 ELSE v_fence END;
    END IF;
    DELETE FROM dlock_locks WHERE key = p_key AND expires <= now();
    -- Now and then, expired rows of keys nobody takes any more: the oldest 100, found by
    -- the expiry index and deleted by their row ids (a TID scan), so that a sweep never
    -- reads the whole table, even before the table's statistics catch up with its size.
    IF random() < 0.02 THEN
        DELETE FROM dlock_locks WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM dlock_locks WHERE expires < now()
                ORDER BY expires LIMIT 100 FOR UPDATE SKIP LOCKED));
    END IF;
    SELECT count(*), max(permits) FILTER (WHERE permits <> p_permits)
        INTO v_live, v_other FROM dlock_locks WHERE key = p_key AND permits > 0;
    IF v_other IS NOT NULL THEN
        RETURN -v_other;
    END IF;
    IF v_live >= p_permits THEN
        IF p_announce THEN
            UPDATE dlock_locks SET waited = true
                WHERE key = p_key AND permits > 0 AND NOT waited;
        END IF;
        RETURN 0;
    END IF;
    v_fence := nextval('dlock_fence');
    INSERT INTO dlock_locks (key, token, fence, permits, expires, value)
        VALUES (p_key, p_token, v_fence, p_permits,
                now() + p_ttl_ms * interval '1 millisecond', p_value);
    RETURN v_fence;
END
$$;

-- Undoes an interrupted attempt: deletes its row, or, if the attempt has not run yet, bars
-- its token until its TTL ends (a row with permits = 0 that holds nothing), so that it takes
-- nothing if it runs later. Answers whether a held row was deleted.
CREATE OR REPLACE FUNCTION dlock_abandon(p_key text, p_token text, p_ttl_ms bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1684823915, hashtext(p_key));
    DELETE FROM dlock_locks WHERE key = p_key AND token = p_token;
    IF FOUND THEN
        RETURN true;
    END IF;
    INSERT INTO dlock_locks (key, token, fence, permits, expires)
        VALUES (p_key, p_token, 0, 0, now() + p_ttl_ms * interval '1 millisecond');
    RETURN false;
END
$$;
