"""Contact import and export (crm.customer.v1.TransferService).

- reader.py: CSV (UTF-8 with or without BOM, GB18030 fallback) and XLSX into rows of text;
- columns.py: which column holds which field (headers that are field names, aliases, a mapping file);
- rows.py: one row -> the normalised values of a create or an update, through the very validation
  CreateContact/UpdateContact run (crm_customer.rules, crm_customer.custom_fields); never a second validator;
- apply.py: a batch of valid rows in one transaction: bulk inserts (crm_customer.bulk) with their outbox
  events, audit entries, field history and custom-field index; updates through the ORM (search upkeep);
- jobs.py: the job table, the two phases (validate everything, then apply in batches) and progress;
- export.py: any filtered list (crm_customer.search.contact_query), keyset pages, as CSV or XLSX;
- servicer.py: the gRPC service.
"""
