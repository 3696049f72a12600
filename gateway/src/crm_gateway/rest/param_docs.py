"""What the common query parameters mean, for OpenAPI: the proto comments are not in the runtime
descriptors, and these parameters mean the same on every list."""

from __future__ import annotations

QUERY_PARAMETER_DOCS: dict[str, str] = {
    "page_size": "Items per page, 1..500 (default 50).",
    "page_token": "The next_page_token of the previous page; bound to the same filters and order.",
    "order_by": (
        "Comma-separated sort keys, `-` for descending, e.g. `last_name,-create_time`; contacts also sort by "
        "`custom.<key>` (a custom field). Ties are broken by id, so paging is stable."
    ),
    "q": "Full text: name, email, phone and company (Chinese matched by any fragment of 1+ characters).",
    "tag": "One tag; use `tags` for several.",
    "tags": "Records carrying every tag given (repeat the parameter: `tags=vip&tags=展会`).",
    "custom_filter": (
        "A custom-field condition `<key><op><value>`, op one of `= != < <= > >=` and `~` (text contains); "
        "`key=` matches records without a value, `key!=` records with one. Repeat for AND."
    ),
    "created_after": "RFC 3339 time (or YYYY-MM-DD, midnight UTC): created at or after it.",
    "created_before": "RFC 3339 time (or YYYY-MM-DD, midnight UTC): created before it.",
    "updated_after": "RFC 3339 time (or YYYY-MM-DD, midnight UTC): changed at or after it.",
    "updated_before": "RFC 3339 time (or YYYY-MM-DD, midnight UTC): changed before it.",
    "classification": "core, potential or general.",
    "lifecycle_stage": "lead, prospect, customer, loyal or churned.",
    "owner_id": "The owning user's id.",
    "kind": "Kinds to include (repeatable), e.g. call, email, meeting, note, opportunity, order, ticket.",
    "since": "RFC 3339: entries that occurred at or after it.",
    "until": "RFC 3339: entries that occurred before it.",
    "format": "csv (default) or xlsx.",
    "dry_run": "true: check every row and report problems, write nothing.",
    "allow_duplicate": "Admins: create even when the tenant's duplicate policy blocks a likely duplicate.",
    "min_score": "The lowest match score, 1..100 (default: the tenant's duplicate_threshold).",
}


def describe(name: str) -> str:
    return QUERY_PARAMETER_DOCS.get(name, "")
