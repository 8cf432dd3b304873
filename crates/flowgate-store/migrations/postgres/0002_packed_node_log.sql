-- Node executions are stored packed: one row per run and recorder batch (usually one per run)
-- holding every node execution that finished in it, as a JSON array. Ten nodes cost one row
-- and one index entry instead of ten rows and twenty entries: fewer pages written per run and
-- far less per-row overhead in the database. Payloads stay content-addressed in `payloads`;
-- the array holds their hashes.
CREATE TABLE run_nodes (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    -- How many node executions `data` holds.
    nodes BIGINT NOT NULL,
    -- `raw` (JSON) or `lz4` (the JSON compressed, size-prepended).
    codec TEXT NOT NULL,
    data BYTEA NOT NULL
);
CREATE UNIQUE INDEX run_nodes_run ON run_nodes (run_id, seq);

INSERT INTO run_nodes (run_id, seq, nodes, codec, data)
SELECT run_id, 0, COUNT(*), 'raw', convert_to(json_agg(json_build_object(
    'id', id, 'index', position, 'node_id', node_id, 'node_type', node_type, 'title', title, 'status', status,
    'error', error, 'elapsed_time', elapsed_time, 'inputs', inputs_hash, 'process_data', process_data_hash,
    'outputs', outputs_hash, 'execution_metadata', metadata_hash, 'created_at', created_at, 'finished_at', finished_at
) ORDER BY position)::text, 'UTF8')
FROM node_executions
GROUP BY run_id;

DROP TABLE node_executions;
