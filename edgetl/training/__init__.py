"""`edgetl finetune`: a backbone from the zoo plus a new head, trained on an image folder (``job.py``)."""

from .builders import build_classifier, build_stack, is_batchnorm, tunable_layers, unfreeze, weighted_layers
from .config import BACKBONE_LAYER, LOGITS_LAYER, FinetuneConfig, TrainedModel
from .distill import distill_loss, teacher_probabilities, teacher_rows, train_distilled
from .fit import evaluate, train_phase
from .io import check_keras_file, load_keras_model, load_trained, plot_history, save_model_dir
from .job import finetune, model_card, weights_source

__all__ = ["BACKBONE_LAYER", "LOGITS_LAYER", "FinetuneConfig", "TrainedModel", "build_classifier", "build_stack",
           "check_keras_file", "distill_loss", "evaluate", "finetune", "is_batchnorm", "load_keras_model",
           "load_trained", "model_card", "plot_history", "save_model_dir", "teacher_probabilities", "teacher_rows",
           "train_distilled", "train_phase", "tunable_layers", "unfreeze", "weighted_layers", "weights_source"]
