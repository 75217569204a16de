"""Schemathesis hooks for anamnesis: one extra check that keeps a narrow
exception narrow.

`positive_data_acceptance` says: a request the schema calls valid must not be
refused with 400 or 422. For a few operations the service validates what no
JSON Schema can state (whether `0612` is a phone number, whether every
identifier is a placeholder, whether `occurred_at` lies in the future, the
size of a value as JSON), and refuses those with 422 and a code that names
the rule. `schemathesis.toml` lets exactly those operations answer 422 to
schema-valid data; this check then insists that such a 422 carries one of
those codes, and no other. A 422 for anything the schema could have said
(`unknown_field`, `invalid_field`, `invalid_channel`, ...) still fails the run.
"""

import json

import schemathesis
from schemathesis.specs.openapi.checks import is_unexpected_http_status_case

# operationId -> the codes of rules the OpenAPI document cannot express.
SEMANTIC_REJECTIONS = {
    # Normalisers (phone numbers by libphonenumber, e-mail shape, control
    # characters, placeholders), per-type limits within one signal, the time
    # window of occurred_at (relative to now), value sizes and depths as JSON.
    "ingest": {
        "invalid_identifier",
        "no_usable_identifier",
        "identifier_limit_exceeded",
        "occurred_at_in_future",
        "timestamp_out_of_range",
        "trait_value_too_large",
        "answer_value_too_large",
        "properties_too_large",
        "value_too_deep",
    },
    # The identifier value is normalised like any other.
    "lookup": {"invalid_identifier"},
    "context_by_identifier": {"invalid_identifier"},
    "personalization_by_identifier": {"invalid_identifier"},
    "remove_identifier": {"invalid_identifier"},
    # Value sizes and depths as JSON.
    "patch_traits": {"trait_value_too_large", "value_too_deep"},
    "add_answers": {"answer_value_too_large", "value_too_deep"},
    # `source_id` equal to the path's `target_id`: a relation between two
    # parameters, which JSON Schema cannot state.
    "merge": {"same_profile"},
}


@schemathesis.check
def semantic_rejections_only(ctx, response, case):
    """A schema-valid request refused with 422 names a rule the schema cannot state."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code != 422 or is_unexpected_http_status_case(case):
        return None
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    allowed = SEMANTIC_REJECTIONS.get(case.operation.definition.raw.get("operationId"), set())
    if "idempotency-key" in {k.lower() for k in (case.headers or {})}:
        # The key was used with another request before: a rule about an
        # earlier request, which no schema of this one can state.
        allowed = allowed | {"idempotency_key_reused"}
    if code not in allowed:
        raise AssertionError(
            f"Schema-valid data was refused with 422 `{code}`, which is not a rule the "
            f"schema cannot state for this operation (allowed: {sorted(allowed) or 'none'}). "
            "Make the schema say it, or fix the validation."
        )
    return None
