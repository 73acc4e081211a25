"""Metadata files, fingerprints and atomic writes (numpy-free, TensorFlow-free).

Two JSON documents carry everything a later stage needs (``models/README.md``), typed in ``cards.py``:

* ``edgetl.json`` in a model directory (finetune/prune): ``ModelCard``.
* ``<artifact>.json`` next to every exported artifact: ``ArtifactSidecar``. The runtime and the bench
  read nothing else.

``files.py``: JSON and hash helpers; ``outputs.py``: the output-folder rule and atomic directories;
``artifacts.py``: an artifact's files, their hashes, its sidecar; ``validate.py``: every field of a
sidecar or embedded description, checked once.
"""

from .artifacts import (artifact_files, compiled_for_npu, hash_artifact, read_sidecar, sidecar_path,
                        verify_artifact)
from .cards import (ARTIFACT_SCHEMA, MODEL_FILE, MODEL_METADATA, MODEL_SCHEMA, ArtifactSidecar, ModelCard,
                    check_model_metadata, read_artifact_sidecar, read_model_card, read_model_metadata)
from .files import fingerprint_files, read_json, sha256_file, software_versions, write_json
from .outputs import (OUTPUT_MARKER, OUTPUT_SCHEMA, atomic_directory, check_output_dir, is_edgetl_output,
                      output_marker, read_output_marker, remove_stale_temporaries)
from .validate import check_description, check_labels, check_recipe

__all__ = ["check_description", "check_labels", "check_recipe", "ARTIFACT_SCHEMA", "MODEL_FILE", "MODEL_METADATA", "MODEL_SCHEMA", "OUTPUT_MARKER",
           "OUTPUT_SCHEMA", "ArtifactSidecar", "ModelCard", "artifact_files", "compiled_for_npu", "atomic_directory",
           "check_model_metadata", "check_output_dir", "fingerprint_files", "hash_artifact", "is_edgetl_output",
           "output_marker", "read_artifact_sidecar", "read_json", "read_model_card", "read_model_metadata",
           "read_output_marker", "read_sidecar", "remove_stale_temporaries", "sha256_file", "sidecar_path",
           "software_versions", "verify_artifact", "write_json"]
