"""The run directory: :class:`RunStore` (``rundir``: written as the run goes, resumable, locked),
the files below it (``files``: markers, guarded JSON/JSONL, schema checks), which run a directory
holds (``identity``: fingerprints, settings' differences), the records as tables
and completeness (``tables``), and the schemas of the files crosspatch writes (``schemas``;
docs/schemas.md rendered from them: ``schema_docs``)."""

from .files import (
    COLLECTION_MARKER,
    CONFIG_SCHEMA,
    EVENTS_FILE,
    MARKER,
    NO_DIV_FILE,
    RESULT_RULES,
    SUMMARY_SCHEMA,
    check_out_path,
    check_schema,
    check_summary_shape,
    checked,
    collection_kind,
    collection_runs,
    environment,
    json_document,
    json_line,
    json_value,
    mark_collection,
    not_a_run_message,
    package_version,
    read_collection_summary,
    read_json_object,
    write_whole,
)
from .identity import fingerprint, settings_diff
from .rundir import RunStore
from .tables import check_complete, completed_prompts, events_frame, missing_prompts, records_frame

__all__ = [
    "COLLECTION_MARKER", "CONFIG_SCHEMA", "EVENTS_FILE", "MARKER", "NO_DIV_FILE", "RESULT_RULES", "SUMMARY_SCHEMA", "RunStore", "check_complete", "check_out_path", "check_schema",
    "check_summary_shape", "checked", "collection_kind", "collection_runs", "completed_prompts", "environment", "events_frame",
    "fingerprint", "json_document", "json_line", "json_value", "mark_collection", "missing_prompts", "not_a_run_message", "package_version", "read_collection_summary",
    "read_json_object", "records_frame", "settings_diff", "write_whole",
]
