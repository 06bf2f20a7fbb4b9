CREATE OR REPLACE VIEW records AS
SELECT
    seq,
    request_id,
    make_timestamp(received_us) AS received_at,
    make_timestamp(responded_us) AS responded_at,
    responded_us - received_us AS latency_us,
    model_name,
    model_version,
    model_sha256,
    env_id,
    peer AS caller,
    metadata,
    status,
    message,
    violations,
    NULLIF(detail, '')::JSON AS detail,
    greatest(len(inputs), len(inputs_text), len(outputs), len(outputs_text)) AS batch_size,
    inputs,
    inputs_text,
    outputs,
    outputs_text,
    parameters,
    lower(hex(hash)) AS hash
FROM entries
WHERE kind = 'infer';

CREATE OR REPLACE VIEW decisions AS
SELECT
    seq,
    request_id,
    received_at,
    model_name,
    model_sha256,
    status,
    parameters,
    unnest(range(batch_size)) AS row,
    unnest(inputs) AS inputs,
    unnest(inputs_text) AS inputs_text,
    unnest(outputs) AS outputs,
    unnest(outputs_text) AS outputs_text
FROM records
WHERE status = 'OK';

CREATE OR REPLACE VIEW audit_log AS
SELECT
    seq,
    kind,
    request_id,
    make_timestamp(received_us) AS at,
    peer AS caller,
    status,
    message,
    detail::JSON AS detail
FROM entries
WHERE kind <> 'infer';
