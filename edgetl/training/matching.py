"""Distillation as function matching (``--teacher-view same``; Beyer et al. 2022, "Knowledge
distillation: A good teacher is patient and consistent"): at every step the teacher and the student
see the SAME augmented view (random crop, flip, optional mixup), and the loss is the pure KL between
their softened outputs, with no label term.

The teacher runs inside the training step, so there is nothing to precompute, but each step costs
one teacher forward pass on top of the student's (a three-backbone stack: about 3.4x lite0). One view
serves both models at their own resolution: the crop is taken at the teacher's input size from its
training canvas (its own ``resize_shorter``) and resized to the student's input size, so with equal
crop ratios (224/256 = 260/297) the student sees the field of view its usual augmentation gives it.
keras.distillation.Distiller would feed both models one input tensor, hence the small Model below with
its own training step (each model gets its own size and normalisation of the view).
"""

from __future__ import annotations

from pathlib import Path

from ..console import say
from ..data import ImageSet, load_pixels, make_dataset, random_crop_flip, seed_pairs, tf_normaliser
from ..preprocess import Preprocessing
from .config import FinetuneConfig
from .fit import train_phase
from .io import load_trained


def shared_views(pixels, teacher_recipe: Preprocessing, student_recipe: Preprocessing, batch_size: int,
                 seed: int, mixup: float):
    """tf.data of (teacher input, student input) batches: one random crop + flip per photo (and, with
    ``mixup`` > 0, each view mixed with another of its batch at Beta(mixup, mixup)), normalised for each."""
    import tensorflow as tf

    height, width = teacher_recipe.input_size

    for_teacher, for_student = tf_normaliser(teacher_recipe), tf_normaliser(student_recipe)

    def crop(image, seeds):
        return tf.cast(random_crop_flip(image, (height, width), seeds), tf.float32)

    def pair(views, seeds):
        if mixup > 0:
            # The batch is already shuffled, so its reverse is a random partner for each view.
            a_seed, b_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
            a = tf.random.stateless_gamma(tf.shape(views)[:1], a_seed, alpha=mixup)
            b = tf.random.stateless_gamma(tf.shape(views)[:1], b_seed, alpha=mixup)
            lam = tf.reshape(a / (a + b), (-1, 1, 1, 1))
            views = lam * views + (1.0 - lam) * views[::-1]
        student = tf.image.resize(views, student_recipe.input_size, "bilinear", antialias=True)
        return for_teacher(views), for_student(student)

    ds = tf.data.Dataset.from_tensor_slices(pixels).cache()
    ds = ds.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    # Stateless draws seeded in order (data.seed_pairs), so the same --seed gives the same views.
    ds = tf.data.Dataset.zip(ds, seed_pairs(seed)).map(crop, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    ds = tf.data.Dataset.zip(ds, seed_pairs(seed + 1)).map(pair, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _matcher(student, teacher, temperature: float, teacher_logits: bool):
    """A Keras model whose training step fits ``student`` to ``teacher`` on each batch of shared views
    (T^2 KL(teacher_T || student_T)) and whose test step is the student's label loss and accuracy;
    only the student's trainable variables change."""
    import keras
    import tensorflow as tf

    class FunctionMatching(keras.Model):
        def __init__(self):
            super().__init__(name="function_matching")
            self.student, self.teacher = student, teacher
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.agreement = keras.metrics.Mean(name="agreement")
            self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

        @property
        def metrics(self):
            return [self.loss_tracker, self.agreement, self.accuracy]

        def call(self, inputs, training=False):
            return self.student(inputs, training=training)

        def train_step(self, data):
            teacher_x, student_x = data
            target = self.teacher(teacher_x, training=False)
            target = target if teacher_logits else tf.math.log(tf.clip_by_value(target, 1e-7, 1.0))
            soft_target = tf.nn.softmax(target / temperature)
            variables = self.student.trainable_variables
            with tf.GradientTape() as tape:
                probs = self.student(student_x, training=True)
                log_student = tf.nn.log_softmax(tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0)) / temperature)
                kl = tf.reduce_sum(soft_target * (tf.math.log(tf.clip_by_value(soft_target, 1e-12, 1.0))
                                                  - log_student), -1)
                loss = temperature ** 2 * tf.reduce_mean(kl)
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            self.loss_tracker.update_state(loss)
            self.agreement.update_state(tf.cast(tf.equal(tf.argmax(probs, -1), tf.argmax(target, -1)), tf.float32))
            return {"loss": self.loss_tracker.result(), "agreement": self.agreement.result()}

        def test_step(self, data):
            x, labels = data
            probs = self.student(x, training=False)
            self.loss_tracker.update_state(keras.losses.sparse_categorical_crossentropy(labels, probs))
            self.accuracy.update_state(labels, probs)
            return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy.result()}

    return FunctionMatching()


def consistent_phases(config: FinetuneConfig, model, train_set: ImageSet, val_set: ImageSet,
                      recipe: Preprocessing, history: list):
    """(phase(epochs, lr, name), teacher val accuracy) for function matching on ``model``."""
    import numpy as np

    from ..metrics import softmax

    teacher, metadata = load_trained(Path(config.teacher))
    teacher.trainable = False
    teacher_recipe = Preprocessing.from_dict(metadata["preprocessing"])
    logits = (metadata.get("output") or {}).get("kind") == "logits"
    views = shared_views(load_pixels(train_set.paths, teacher_recipe, training=True), teacher_recipe, recipe,
                         config.batch_size, config.seed, config.mixup)
    val_ds = make_dataset(val_set, recipe, config.batch_size, False) if len(val_set) else None
    matcher = _matcher(model, teacher, config.temperature, logits)
    teacher_val = None
    if len(val_set):
        val_probs = teacher.predict(teacher_recipe.normalize(load_pixels(val_set.paths, teacher_recipe)), verbose=0)
        val_probs = softmax(val_probs) if logits else val_probs
        teacher_val = float((np.argmax(val_probs, -1) == np.asarray(val_set.labels)).mean())
        say(f"teacher {config.teacher}: val accuracy {teacher_val:.3f}; it sees each training view", config.verbose)

    def phase(epochs: int, lr: float, name: str) -> None:
        train_phase(matcher, views, val_ds, epochs, lr, name, config.verbose, history, loss=None, metrics=())

    return phase, teacher_val
