-- A scheduler batch that needs no transaction block writes everything in one statement, which commits
-- as it ends: whatever must hold for that batch has to be checked inside the statement, and a failed
-- check has to abort it (nothing written). The statement calls this with what it found: the partition
-- lease (NULL once lost), whether the workflow row still has the configuration the batch was computed
-- with (locked until the commit), and whether the runs the batch started are new (none of their ids
-- existed). Each failure has its own SQLSTATE, for the actor to tell them apart: LG001 the lease is
-- lost (the messages go back for the new owner), LG002 the batch was computed from what is no longer
-- so (the actor computes it again from fresh state, in a transaction).
CREATE FUNCTION legato_batch_check(lease boolean, workflow_unchanged boolean, runs_new boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF lease IS NULL THEN
        RAISE EXCEPTION 'partition lease lost' USING ERRCODE = 'LG001';
    END IF;
    IF workflow_unchanged IS NOT TRUE THEN
        RAISE EXCEPTION 'workflow changed since the batch read it' USING ERRCODE = 'LG002';
    END IF;
    IF runs_new IS NOT TRUE THEN
        RAISE EXCEPTION 'a run the batch started exists already' USING ERRCODE = 'LG002';
    END IF;
    RETURN true;
END
$$;
