-- One row per assignment of a case to a department / assignee, as of the export snapshot.
select
    a.id,
    a.request_id,
    a.department_id,
    a.assignee_id,
    a.assigned_by,
    a.priority,
    a.sla_due_at,
    a.templates::text as templates,
    a.created_at
from {{ source('app', 'assignments') }} as a
