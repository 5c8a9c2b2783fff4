-- One row per service request (case) as of the export snapshot.
-- Reporter contact details stay out: the package is for audit, not for outreach.
-- No ORDER BY: rows come in storage order (sorting 1M rows doubled the dbt tests' time,
-- which wrap the model); sort the CSV by id when comparing two nights.
select
    r.id,
    r.reference,
    r.organization_id,
    r.department_id,
    r.title,
    r.status,
    r.priority,
    r.channel,
    r.sla_due_at,
    r.expedited,
    r.created_at,
    r.updated_at,
    r.resolved_at,
    r.closed_at
from {{ source('app', 'service_requests') }} as r
