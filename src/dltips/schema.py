"""The train config's schema: every key with its type, default, doc and what it means for
batching, resuming and summaries, in one place.

conf/train.yaml's defaults list starts with `train_schema` (TrainConf), so Hydra types every
value while it composes: `seed=abc` fails there, naming the key. The ranges (>= 1, one of a
few choices) are checked by dltips.config.validate. Metadata of a field (see `meta`):

- per_run: may differ between the runs of one batched group (dltips.group)
- resumable: may change when a run is resumed (dltips.resume)
- defines_results: a resumable key that changes the results: a run resumed with another
  value is labelled with it (metrics.json "resumed_with")
- shown: a setting of the run, a column of summaries (False: says how or where to run)
- description: describes a preset, not a setting (the console does not list it)
- optimizer_wide: built into the optimizer, not set per param group (dltips.train)
- hparam: its name in TensorBoard's HParams tab (dltips.tensorboard_log)

A field that is a node (a dataclass, or `node=True`) with a flag set means all of its keys:
keys_where returns it as a prefix ending in ".".
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

FLAGS = (
    "per_run",
    "resumable",
    "defines_results",
    "shown",
    "description",
    "optimizer_wide",
    "hparam",
)


def meta(default: Any = MISSING, doc: str = "", **flags: Any) -> Any:
    """A dataclass field with its default (a node's class: built fresh), doc and flags."""
    assert set(flags) <= {*FLAGS, "node"}, set(flags) - {*FLAGS, "node"}
    metadata = {"doc": doc, **flags}
    if dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConf:
    """`model`: a fully connected network, depth x (Linear -> activation -> Dropout), then a
    Linear output layer with one logit per class (sizes from the data)."""

    _target_: str = meta("dltips.models.build_mlp", "the function that builds the network")
    depth: int = meta(2, "number of hidden layers (>= 1)", hparam="model/depth")
    # an int or a list: OmegaConf cannot type a union of a scalar and a list
    width: Any = meta(
        500,
        "units per hidden layer: an int, or a list with one width per layer "
        "(`model.width=[500,200]`, length = depth)",
        hparam="model/width",
    )
    params: int | None = meta(
        None,
        "a budget of parameters: null = off; N = choose the width so that the network at this "
        "depth and activation has about N parameters (within 1% from 100,000 on, the last hidden "
        "layer's width tuned; below, the nearest uniform width). The console prints the widths "
        "and the exact count. Giving `model.width` with it is an error",
        hparam="model/params",
    )
    activation: Any = meta(
        doc="the activation, as `_target_:` a `torch.nn` class (`torch.nn.ReLU`) or "
        "`dltips.models.Maxout`; e.g. `model.activation._target_=torch.nn.GELU`",
        hparam="model/activation",
    )
    dropout: float = meta(
        0.0,
        "probability of **dropping** a hidden unit, 0 = off. This is Keras' meaning (and "
        "torch's): `0.7` drops 70% of the units, keeps 30%",
        per_run=True,
        hparam="model/dropout",
    )
    init: str = meta(
        "default",
        "weight init: `default` (torch's), `xavier` (Glorot uniform), `kaiming` (He normal); "
        "the last two zero the biases",
        per_run=True,
        hparam="model/init",
    )


@dataclass
class MaxoutConf(ModelConf):
    """`model=maxout`: each hidden unit is the max of `pieces` linear pieces."""

    pieces: int = meta(
        2,
        "`maxout` only: linear pieces per unit (each hidden Linear layer has `width * pieces` "
        "outputs, the max over each group of `pieces` is the unit)",
    )


@dataclass
class OptimKeys:
    """`optim`: a `torch.optim` class as `_target_` with `_partial_: true`; the training loop
    passes the parameters. Each class has its own arguments, so composing does not type this
    node: these are the keys dltips knows (any other argument: `+optim.KEY=VALUE`)."""

    _target_: str = meta(doc="the `torch.optim` class", optimizer_wide=True, hparam="optim")
    _partial_: bool = meta(True, "the loop passes the parameters", optimizer_wide=True)
    lr: float = meta(
        doc="learning rate (> 0); sgd, momentum, nesterov 0.1; adagrad 0.01; rmsprop, adam, "
        "adamw 0.001",
        per_run=True,
        hparam="optim/lr",
    )
    weight_decay: float = meta(
        0.0,
        "L2 penalty, torch's meaning: `weight_decay * w` added to the gradient (decoupled for "
        "adamw, whose default is 0.01)",
        per_run=True,
        hparam="optim/weight_decay",
    )
    momentum: float = meta(
        0.0,
        "SGD's and RMSProp's momentum, in [0, 1) (optim=momentum, nesterov: 0.9)",
        per_run=True,
        hparam="optim/momentum",
    )
    nesterov: bool = meta(
        False, "SGD's Nesterov momentum (needs momentum > 0)", hparam="optim/nesterov"
    )
    alpha: float = meta(0.99, "RMSProp's smoothing constant, in [0, 1)", per_run=True)
    betas: Any = meta((0.9, 0.999), "Adam's and AdamW's: two numbers in [0, 1)", per_run=True)
    eps: float = meta(doc="Adam's, RMSProp's, Adagrad's: a small number > 0", per_run=True)
    fused: Any = meta(
        None,
        "one fused kernel per step (true, false or null): several times faster than the "
        "per-tensor loop on CPU",
        optimizer_wide=True,
    )
    foreach: Any = meta(None, "torch's per-tensor loop choice", optimizer_wide=True)
    capturable: Any = meta(None, "torch's CUDA-graph capture flag", optimizer_wide=True)
    differentiable: Any = meta(None, "torch's autograd-through-step flag", optimizer_wide=True)


@dataclass
class LossConf:
    """`loss`: the criterion and an L1 penalty."""

    criterion: Any = meta(
        doc="`_target_` of the loss module (`torch.nn.CrossEntropyLoss`, "
        "`dltips.losses.SoftmaxMSELoss`)",
        hparam="loss",
    )
    l1: float = meta(
        0.0,
        "coefficient of an L1 penalty on the weights (not the biases), 0 = off",
        per_run=True,
        hparam="loss/l1",
    )


@dataclass
class DataConf:
    """`data`: the data set, its split and its preprocessing."""

    name: str = meta(doc="the data set's name (the option's)", hparam="data")
    source: Any = meta(
        doc="the reader (`_target_`: `dltips.data.read_mnist_5k` or "
        "`dltips.data.read_torchvision` with the torchvision `dataset` class and an optional "
        "`system_dir` of `.gz` IDX files to use before downloading)",
    )
    root: str = meta(
        "${oc.env:DLTIPS_DATA_DIR,data}",
        "data directory (env `DLTIPS_DATA_DIR` if set). A relative path is relative to where you "
        "start the command, also with `hydra.job.chdir=true` (where each job runs inside its own "
        "run dir). torchvision's meaning: files in `<root>/MNIST/raw/` or "
        "`<root>/FashionMNIST/raw/`. Decoded tensors are cached in `<root>/cache/<name>.pt`, so "
        "the files are decoded once, for every run",
        resumable=True,
    )
    download: bool = meta(
        True, "let torchvision download missing files (`mnist_5k`: unused)", resumable=True
    )
    batch_size: int = meta(100, "examples per gradient step", hparam="data/batch_size")
    train_size: int | None = meta(
        None,
        "null = all; N = train on a class-stratified random N of the training split (each class "
        "within one image of its share), drawn with `data.subset_seed` before the validation "
        "hold-out, so every `seed` trains on the same images, e.g. `10000` as in the lecture",
        hparam="data/train_size",
    )
    subset_seed: int | None = meta(
        0,
        "which subset `train_size` takes (another integer, another subset); `null` = the first N "
        "left after the hold-out, in the data set's order (dltips 0.1's rule; on the class-sorted "
        "`mnist_5k` that is one or a few classes)",
        per_run=True,
        hparam="data/subset_seed",
    )
    bootstrap: bool = meta(
        False,
        "train on a bootstrap resample: N draws with replacement from the run's training split "
        "(N = its size, after `train_size`), drawn with `seed`, so K seeds are K resamples "
        "(bagging); validation and test splits are unchanged",
        per_run=True,
        hparam="data/bootstrap",
    )
    val_size: int = meta(
        doc="images held out of the training split for validation (seeded by `seed`, "
        "stratified by class): `mnist_5k` 500, the others 5000; drives early stopping and "
        "`best.pt`",
    )
    normalize: str = meta(
        "unit",
        "`unit` = x/255; `none` = raw 0..255 pixels; `standard` = zero mean, unit variance, with "
        "the mean and std of the training split",
        hparam="data/normalize",
    )
    test_noise_std: float = meta(
        0.0,
        "std of Gaussian noise added to the **test** inputs after normalization (the lecture's "
        "noisy-test experiment), 0 = off",
        per_run=True,
        hparam="data/test_noise_std",
    )


@dataclass
class EarlyStoppingConf:
    """`trainer.early_stopping`: stop when the monitored metric stops improving."""

    monitor: str = meta("val/loss", "`train/loss`, `train/acc`, `val/loss` or `val/acc`")
    mode: str | None = meta(
        None,
        "`null` follows the metric (`*/acc`: higher is better, `*/loss`: lower); `min` or `max` to"
        " say it yourself (a mode that contradicts the metric is an error)",
        resumable=True,
    )
    patience: int | None = meta(
        5,
        "stop after this many epochs without improvement; `null` disables early stopping (train "
        "all `max_epochs`)",
        resumable=True,
        hparam="trainer/patience",
    )
    min_delta: float = meta(0.0, "smallest change that counts as an improvement", resumable=True)
    restore_best: bool = meta(
        True,
        "evaluate and report the best epoch's weights (from `best.pt`) instead of the last epoch's",
        resumable=True,
    )


@dataclass
class TrainerConf:
    """`trainer`: how long, where and how precisely to train; checkpoints."""

    max_epochs: int = meta(
        20, "epochs at most", resumable=True, defines_results=True, hparam="trainer/max_epochs"
    )
    device: str = meta(
        "auto",
        "`auto` (CUDA, else Apple's MPS, else the CPU), `cpu`, `cuda`, `cuda:N`, `mps`. The "
        "model and the whole data set are moved to the device once",
        resumable=True,
        shown=False,
    )
    early_stopping: EarlyStoppingConf = meta(
        EarlyStoppingConf, "early stopping", per_run=True, defines_results=True
    )
    grad_clip: float | None = meta(
        None, "clip the global gradient norm to this value; null = off", per_run=True
    )
    precision: str = meta(
        "32", "`32` or `bf16` (bfloat16 autocast on CPU or GPU)", hparam="trainer/precision"
    )
    # auto or a bool: OmegaConf cannot type a union
    cuda_graphs: Any = meta(
        "auto",
        "on CUDA, capture one epoch's steps as a CUDA graph once and replay it every epoch, "
        "a single run's or a batched group's (`auto`: on for CUDA, off on the CPU; `true` on "
        "the CPU is an error). Adagrad cannot step inside a graph and trains eagerly (one log "
        "line says so)",
    )
    tf32: bool = meta(
        True, "on CUDA, float32 matrix multiplies on TF32 tensor cores (faster; 10-bit mantissa)"
    )
    resume: str | None = meta(
        None,
        "a run directory (continues from its `checkpoints/last.pt`, in that directory) or a "
        "checkpoint file; single runs only (a sweep uses `sweep.resume`)",
        per_run=True,
        resumable=True,
        shown=False,
    )
    checkpoint_every: int = meta(
        1,
        "write `checkpoints/last.pt` (and `best.pt`) every N epochs, always at the end and on "
        "Ctrl-C or SIGTERM; the epochs between are kept in memory, so results are the same. Only a"
        " crash or SIGKILL then loses up to N - 1 epochs. TensorBoard's events are flushed with "
        "each save (and every 2 minutes). Saving is about a tenth of a small network's epoch "
        "(see Batched sweeps)",
        resumable=True,
    )
    flush_denormal: bool = meta(
        True,
        "`true` or `false`. On the CPU, treat denormal floats (below ~1e-38) as zero: weights and "
        "gradients that underflow there otherwise make epochs 2-3x slower",
        resumable=True,
    )
    num_threads: int | None = meta(
        None,
        "CPU threads torch uses (an integer >= 1); null = torch's default, or `cores / n_jobs` in "
        "a parallel sweep",
        resumable=True,
        shown=False,
    )


@dataclass
class SweepConf:
    """`sweep`: continuing a sweep."""

    resume: str | None = meta(
        None,
        "an earlier sweep dir: rerun only its unfinished or failed jobs, in place",
        per_run=True,
        resumable=True,
        shown=False,
    )


@dataclass
class TrainConf:
    """The train config (conf/train.yaml), its groups' nodes typed by their schemas."""

    seed: int = meta(
        0,
        "seeds the initialization, the validation split, the batch order, dropout and the "
        "test noise",
        per_run=True,
        hparam="seed",
    )
    sweep: SweepConf = meta(SweepConf, "continuing a sweep")
    lecture: Any = meta(
        None,
        "set by the lecture presets only: `change` and `published` accuracies, read by the "
        "report; training ignores it",
        node=True,
        per_run=True,
        resumable=True,
        description=True,
    )
    model: ModelConf = meta(doc="the network")
    optim: Any = meta(doc="the optimizer", node=OptimKeys)
    loss: LossConf = meta(doc="the loss")
    data: DataConf = meta(doc="the data")
    trainer: TrainerConf = meta(doc="the training loop")


def nodes(cls: type = TrainConf, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every field of `cls` and of the nodes below it, in order."""
    found = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        found.append((key, f))
        below = f.metadata.get("node")
        if below is None or below is True:
            below = f.type if dataclasses.is_dataclass(f.type) else None
        if below:
            found += nodes(below, key + ".")
            if below is ModelConf:  # model=maxout's own key
                found.append((key + ".pieces", dataclasses.fields(MaxoutConf)[-1]))
    return found


def is_node(f: dataclasses.Field) -> bool:
    return dataclasses.is_dataclass(f.type) or bool(f.metadata.get("node"))


def keys_where(flag: str, value: Any = True) -> tuple[str, ...]:
    """The keys whose `flag` is `value` (shown defaults to True, the others to False); a
    node's key ends in "." and stands for all of its keys."""
    default = flag == "shown"
    keys = []
    covered: tuple[str, ...] = ()
    for key, f in nodes():
        if key.startswith(covered):
            continue
        if f.metadata.get(flag, default) == value:
            keys.append(key + "." if is_node(f) else key)
            if is_node(f):
                covered = (*covered, key + ".")
    return tuple(keys)


def hparams() -> dict[str, str]:
    """{HParams name: dotted key} of the keys TensorBoard's HParams tab shows."""
    return {f.metadata["hparam"]: key for key, f in nodes() if "hparam" in f.metadata}


store = ConfigStore.instance()
store.store(name="train_schema", node=TrainConf)
store.store(name="maxout_schema", node=MaxoutConf)
