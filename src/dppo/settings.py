"""Every setting of a run, as frozen dataclasses: the one home of every default.

The Snakefile builds one :class:`PipelineSettings` from the config at start-up
(:func:`dppo.config.load_settings`); a value the config leaves out takes the default written
here, and nowhere else (the schema declares none, rules use none: ``tests/test_settings.py``
checks both). Rules hand a section or one experiment to its job as a plain dict
(``to_dict()``); the job parses it back once (``from_dict``), so a job sees exactly what the
planner saw.

Every class checks its own values when built (finite numbers, ranges, names), so a bad value
stops the run before any job, with a message naming the config key. This module imports
neither torch nor transformers: a dry run plans the paper's grid without them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Mapping

R_MODES = ("policy", "implicit")
UNLL_LEVELS = ("sequence", "token_sum", "token_mean")
# Controls of what y_gen adds: the penalty on the rejected answer instead, or fired on a random
# set of rows of the batch as large as the trigger's (the same f(r) values, shuffled).
GEN_SOURCES = ("ygen", "rejected")
GATES = ("trigger", "random")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
GROUPS = ("main", "alpha_sweep", "unll_forms", "data_efficiency", "chained", "3d_variants", "dpo_tuning", "controls",
          "aa_twin")
# The groups whose penalized runs form the alpha sweep (and the penalty variant is picked from).
PENALTY_SWEEP_GROUPS = ("main", "alpha_sweep")
GENERATION_BACKENDS = ("transformers", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
REWARD_BACKENDS = ("programmatic", "seqcls", "nemotron")
REWARD_ENGINES = ("transformers", "vllm")
# An experiment's loss is named by this config key (LossSettings.name in code).
LOSS_KEY = "loss"


class ConfigError(ValueError):
    """A config value that stops the run before any job starts; the message names the key."""


class FieldError(ValueError):
    """A bad value of one field; :func:`parse` turns it into a ConfigError naming the key."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


# ----------------------------------------------------------------------------- value checks


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_number(name: str, value, *, minimum=None, above=None, maximum=None, optional=False) -> None:
    """A finite number (NaN and infinities are refused) within the given bounds."""
    if value is None and optional:
        return
    if not _is_number(value) or not math.isfinite(value):
        raise FieldError(name, f"must be a finite number, got {value!r}")
    if minimum is not None and not value >= minimum:
        raise FieldError(name, f"must be >= {minimum}, got {value!r}")
    if above is not None and not value > above:
        raise FieldError(name, f"must be > {above}, got {value!r}")
    if maximum is not None and not value <= maximum:
        raise FieldError(name, f"must be <= {maximum}, got {value!r}")


def check_int(name: str, value, *, minimum=None, optional=False) -> None:
    if value is None and optional:
        return
    if not _is_int(value):
        raise FieldError(name, f"must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise FieldError(name, f"must be >= {minimum}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise FieldError(name, f"{value!r} is not one of: {', '.join(map(str, choices))}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise FieldError(name, f"must be true or false, got {value!r}")


# ----------------------------------------------------------------------------- parsing


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def parse(cls, values: Mapping[str, Any] | None, where: str):
    """``cls`` built from a config mapping (unknown keys refused), errors naming ``where.key``."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(field_names(cls)))
    if unknown:
        raise ConfigError(f"config key {where}: unknown key(s) {unknown}; valid: {sorted(field_names(cls))}")
    try:
        return cls(**values)
    except FieldError as err:
        raise ConfigError(f"config key {where}.{err.name}: {err.message}") from None


def plain(value):
    """JSON-ready copy: dataclasses become dicts, tuples lists."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Section:
    """``from_dict`` / ``to_dict`` for the plain sections (flat fields only)."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str | None = None):
        return parse(cls, values, where or cls.__name__)

    def to_dict(self) -> dict:
        return plain(self)


# ----------------------------------------------------------------------------- losses


def _always(cfg: "LossSettings") -> bool:
    return True


def _never(cfg: "LossSettings") -> bool:
    return False


def _equal_betas(cfg: "LossSettings") -> bool:
    return cfg.beta_chosen == cfg.beta_rejected


@dataclass(frozen=True)
class LossKind:
    """What the pipeline knows of a loss besides its torch code (``dppo.train.losses.LOSSES``
    and, for a DPPO loss, ``PENALTY_WEIGHTS``). Every question "which losses ..." reads these."""

    name: str
    # A DPPO loss: it penalizes y_gen, weighted by alpha f(r), so training scores y_gen.
    penalizes_gen: bool = False
    # The unll_levels at which it needs y_gen's per-token log-probs (none: it ignores unll_level).
    token_levels: tuple[str, ...] = ()
    # With its penalty silent, does it depend on a pair only through log pi(y_w) - log pi(y_l)?
    # (dppo.toy.summary.margin_only)
    margin_only: Callable[["LossSettings"], bool] = _never
    hyperparameters: tuple[str, ...] = ()  # the LossSettings fields it reads (the toy's macros)

    def label(self, f: str) -> str:
        """A run's default label: the runs of a DPPO loss differ by f, so it is named too."""
        return f"{self.name} ({f})" if self.penalizes_gen else self.name


@dataclass(frozen=True)
class WeightingKind:
    """A weighting f(r) of the DPPO penalty (its torch code: ``dppo.train.losses.WEIGHTINGS``)."""

    name: str
    # Non-zero for r > 0 too: the penalty weighs the correctly ranked rows, not only r < 0.
    fires_on_positive_r: bool = False


_DPPO = {"penalizes_gen": True, "margin_only": _always, "hyperparameters": ("beta", "alpha")}
# The one list of losses: the config's names, in this order.
LOSS_KINDS: dict[str, LossKind] = {kind.name: kind for kind in (
    LossKind("dpo", margin_only=_always, hyperparameters=("beta",)),
    LossKind("minll", **_DPPO),
    LossKind("unll", token_levels=("token_sum", "token_mean"), **_DPPO),
    LossKind("conll", **_DPPO),
    LossKind("ipo", margin_only=_always, hyperparameters=("tau",)),
    LossKind("slic", hyperparameters=("slic_delta", "slic_lambda")),
    LossKind("flex_dpo", margin_only=_equal_betas, hyperparameters=("beta_w", "beta_l")),
    LossKind("dpo_sft", hyperparameters=("beta", "sft_lambda")),
)}
WEIGHTING_KINDS: dict[str, WeightingKind] = {kind.name: kind for kind in (
    WeightingKind("linear"),
    WeightingKind("quadratic"),
    WeightingKind("sqrt"),
    WeightingKind("expectile", fires_on_positive_r=True),
)}


def penalized_losses() -> tuple[str, ...]:
    """The DPPO losses, in record order; read at each call, so a loss added later counts."""
    return tuple(name for name, kind in LOSS_KINDS.items() if kind.penalizes_gen)


# The built-in names, as of import (code that must see a loss added later reads LOSS_KINDS).
LOSS_NAMES = tuple(LOSS_KINDS)
PENALIZED_LOSSES = penalized_losses()  # the DPPO losses: they penalize y_gen
WEIGHTING_NAMES = tuple(WEIGHTING_KINDS)


@dataclass(frozen=True)
class LossSettings(Section):
    """A preference loss and its hyper-parameters (dppo.train.losses reads them; docs/design.md
    gives the formulas). ``name`` is the config key ``loss``."""

    name: str = "dpo"
    f: str = "linear"  # weighting f(r) of the DPPO penalty
    alpha: float = 0.1  # penalty strength
    beta: float = 0.1
    # expectile asymmetry, |zeta - 1{r<0}| r^2: a wrongly ranked row (r < 0) weighs 1 - zeta, a
    # correctly ranked one zeta; zeta < 0.5 makes the wrong ones weigh more (0.5: every row alike)
    zeta: float = 0.1
    r_mode: str = "policy"  # trigger r: policy log-ratio of y_w vs y_l, or the implicit reward margin
    unll_level: str = "token_sum"  # unlikelihood of the whole y_gen, or summed / averaged over its tokens
    gen_source: str = "ygen"  # the response the penalty pushes down (rejected: a control)
    gate: str = "trigger"  # which rows the penalty weighs: f(r) of each row, or shuffled in the batch (a control)
    beta_w: float | None = None  # flex_dpo: beta of the chosen side (None: beta)
    beta_l: float | None = None  # flex_dpo: beta of the rejected side (None: beta)
    tau: float = 0.1  # ipo
    slic_delta: float = 1.0
    slic_lambda: float = 0.1
    sft_lambda: float = 0.1  # dpo_sft

    def __post_init__(self):
        check_choice(LOSS_KEY, self.name, tuple(LOSS_KINDS))
        check_choice("f", self.f, tuple(WEIGHTING_KINDS))
        check_choice("r_mode", self.r_mode, R_MODES)
        check_choice("unll_level", self.unll_level, UNLL_LEVELS)
        check_choice("gen_source", self.gen_source, GEN_SOURCES)
        check_choice("gate", self.gate, GATES)
        if (self.gen_source, self.gate) != ("ygen", "trigger") and not LOSS_KINDS[self.name].penalizes_gen:
            raise FieldError("gate" if self.gate != "trigger" else "gen_source",
                             f"applies to the losses that penalize y_gen ({', '.join(penalized_losses())}), not {self.name!r}")
        for name in ("alpha", "slic_lambda", "sft_lambda"):
            check_number(name, getattr(self, name), minimum=0)
        for name in ("beta", "tau"):
            check_number(name, getattr(self, name), above=0)
        for name in ("beta_w", "beta_l"):
            check_number(name, getattr(self, name), above=0, optional=True)
        check_number("zeta", self.zeta, minimum=0, maximum=1)
        check_number("slic_delta", self.slic_delta)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str | None = None) -> "LossSettings":
        values = dict(values or {})
        if LOSS_KEY in values:
            values["name"] = values.pop(LOSS_KEY)
        elif "name" in values:  # `name` is the code's word; the config's is `loss`
            raise ConfigError(f"config key {where or 'loss'}.name: name the loss with `{LOSS_KEY}:`")
        return parse(cls, values, where or "loss")

    def to_dict(self) -> dict:
        values = plain(self)
        return {LOSS_KEY: values.pop("name"), **values}

    @property
    def kind(self) -> LossKind:
        return LOSS_KINDS[self.name]

    @property
    def token_level(self) -> bool:
        """True when the loss needs y_gen's per-token log-probs (token-level unlikelihood)."""
        return self.unll_level in self.kind.token_levels

    @property
    def needs_gen(self) -> bool:
        """True when the loss penalizes y_gen, so training must score y_gen too."""
        return self.kind.penalizes_gen

    @property
    def beta_chosen(self) -> float:
        return self.beta if self.beta_w is None else self.beta_w

    @property
    def beta_rejected(self) -> float:
        return self.beta if self.beta_l is None else self.beta_l


LOSS_CONFIG_KEYS = tuple(LOSS_KEY if name == "name" else name for name in field_names(LossSettings))


# ----------------------------------------------------------------------------- optimisation


@dataclass(frozen=True)
class OptimSettings(Section):
    """Optimisation settings shared by SFT and preference training."""

    lr: float = 1e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 32  # effective batch size, whatever the device count
    micro_batch_size: int | None = None  # per device; None: the whole batch at once
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    save_steps: int = 100  # checkpoint every N optimizer steps (a killed job resumes there)
    seed: int = 0
    bf16: bool = True  # used only where a GPU supports it
    gradient_checkpointing: bool = False
    # batch rows of similar length (less padding): which rows share a batch changes, not a batch's loss
    group_by_length: bool = False

    def __post_init__(self):
        check_number("lr", self.lr, above=0)
        check_number("epochs", self.epochs, above=0)
        check_int("max_steps", self.max_steps)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("micro_batch_size", self.micro_batch_size, minimum=1, optional=True)
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise FieldError("micro_batch_size", f"{self.micro_batch_size} does not divide batch_size {self.batch_size}")
        check_number("warmup_ratio", self.warmup_ratio, minimum=0, maximum=1)
        check_number("weight_decay", self.weight_decay, minimum=0)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_number("max_grad_norm", self.max_grad_norm, above=0)
        check_int("save_steps", self.save_steps, minimum=1)
        check_int("seed", self.seed, minimum=0)
        for name in ("bf16", "gradient_checkpointing", "group_by_length"):
            check_bool(name, getattr(self, name))


# ----------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Experiment:
    """One preference-training run of the grid: its loss, its optimisation and where it starts.

    In the config an experiment is one flat mapping (``loss: unll``, ``alpha: 0.1``, ``lr: ...``,
    ``n_train: ...``); :meth:`from_flat` sorts the keys into the three parts.
    """

    name: str
    loss: LossSettings = LossSettings()
    optim: OptimSettings = OptimSettings()
    label: str = ""  # "" -> the loss name (and f for the penalties)
    group: str = "main"  # which figure panel it belongs to
    init: str = "sft"  # "sft" or the name of the experiment whose model it starts from (seed by seed)
    n_train: int | None = None  # training rows (a fixed nested subset); None: every row
    seeds: tuple[int, ...] = (0,)  # one run per seed (one job trains them all; optim.seed is set per run)
    # With n_train: as many optimizer steps as the same settings take on every row, so a
    # subset run differs from the full run in its data, not in its number of updates.
    match_full_steps: bool = False
    # Score y_gen (no grad) on every row, to log its per-batch log-prob, even where no penalty
    # fires; off: only the rows a penalty weighs are scored (the same loss, about 10% cheaper
    # steps). The probe rows log y_gen's log-prob either way (dynamics figure).
    track_gen: bool = False
    probe_rows: int = 64  # fixed training rows whose log-probs are logged (dynamics figure)
    probe_every: int = 1  # ... every N optimizer steps
    on_nonfinite: str = "stop"  # a non-finite loss: stop the job, or skip the batch

    def __post_init__(self):
        check_choice("group", self.group, GROUPS)
        check_int("n_train", self.n_train, minimum=1, optional=True)
        if isinstance(self.seeds, list):
            object.__setattr__(self, "seeds", tuple(self.seeds))
        if not isinstance(self.seeds, tuple) or not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise FieldError("seeds", f"must be a list of distinct whole numbers, got {self.seeds!r}")
        for seed in self.seeds:
            check_int("seeds", seed, minimum=0)
        check_bool("track_gen", self.track_gen)
        check_bool("match_full_steps", self.match_full_steps)
        check_int("probe_rows", self.probe_rows, minimum=0)
        check_int("probe_every", self.probe_every, minimum=1)
        check_choice("on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        if not isinstance(self.init, str) or not self.init:
            raise FieldError("init", f"must name 'sft' or an experiment, got {self.init!r}")
        if not self.label:
            controls = {"rejected": " on y_l", "random": ", random gate"}
            label = self.loss.kind.label(self.loss.f) + "".join(
                controls[v] for v in (self.loss.gen_source, self.loss.gate) if v in controls)
            object.__setattr__(self, "label", label)

    RUN_KEYS = ("label", "group", "init", "n_train", "seeds", "match_full_steps", "track_gen", "probe_rows",
                "probe_every", "on_nonfinite")
    # optim.seed is not an experiment key: each run of `seeds` sets it.
    OPTIM_KEYS = tuple(k for k in field_names(OptimSettings) if k != "seed")

    @classmethod
    def from_flat(cls, name: str, values: Mapping[str, Any], where: str) -> "Experiment":
        """From one flat config mapping (loss, optimisation and run keys side by side)."""
        values = dict(values)
        if "seed" in values:
            raise ConfigError(f"config key {where}.seed: an experiment lists its seeds: `seeds: [0, 1, 2]`")
        optim_keys = set(cls.OPTIM_KEYS)
        unknown = sorted(set(values) - set(LOSS_CONFIG_KEYS) - optim_keys - set(cls.RUN_KEYS))
        if unknown:
            raise ConfigError(f"config key {where}: unknown key(s) {unknown}")
        loss = LossSettings.from_dict({k: v for k, v in values.items() if k in LOSS_CONFIG_KEYS}, where)
        optim = OptimSettings.from_dict({k: v for k, v in values.items() if k in optim_keys}, where)
        run = {k: v for k, v in values.items() if k in cls.RUN_KEYS}
        try:
            return cls(name=name, loss=loss, optim=optim, **run)
        except FieldError as err:
            raise ConfigError(f"config key {where}.{err.name}: {err.message}") from None

    def to_dict(self) -> dict:
        """The flat form: what ``results/experiments.json`` lists and a job receives."""
        run = {key: plain(getattr(self, key)) for key in self.RUN_KEYS}
        optim = {k: v for k, v in self.optim.to_dict().items() if k in self.OPTIM_KEYS}
        return {"name": self.name, **self.loss.to_dict(), **optim, **run}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Experiment":
        values = dict(values)
        name = values.pop("name")
        return cls.from_flat(name, values, f"experiments.{name}")


# ----------------------------------------------------------------------------- other stages


DISTRIBUTED = ("ddp", "fsdp2")  # dppo.train.distributed.wrap


@dataclass(frozen=True)
class ModelSettings(Section):
    init: str = "tiny"  # "tiny" (built from `tiny_model`) or a hub id / local path of a causal LM
    trust_remote_code: bool = False
    # How a training job on several GPUs spreads the model: "ddp" (a copy per GPU) or "fsdp2"
    # (sharded, for a model that does not fit one GPU).
    distributed: str = "ddp"

    def __post_init__(self):
        if not isinstance(self.init, str) or not self.init:
            raise FieldError("init", f"must be 'tiny' or a model id / path, got {self.init!r}")
        check_bool("trust_remote_code", self.trust_remote_code)
        check_choice("distributed", self.distributed, DISTRIBUTED)

    @property
    def is_tiny(self) -> bool:
        return self.init == "tiny"


@dataclass(frozen=True)
class TinyModelSpec(Section):
    """Architecture of the embedded default's model (config key ``tiny_model``)."""

    hidden_size: int = 96
    num_hidden_layers: int = 3
    num_attention_heads: int = 3  # head size 32, the smallest vLLM's CPU attention takes
    num_key_value_heads: int = 1
    intermediate_size: int = 192
    max_position_embeddings: int = 256
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "max_position_embeddings"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("seed", self.seed, minimum=0)
        # otherwise the model is built (and fails) inside a job
        if self.hidden_size % self.num_attention_heads:
            raise FieldError("num_attention_heads", f"must divide hidden_size {self.hidden_size}, "
                                                    f"got {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise FieldError("num_key_value_heads", f"must divide num_attention_heads {self.num_attention_heads}, "
                                                    f"got {self.num_key_value_heads}")


@dataclass(frozen=True)
class TaskSpec(Section):
    """Sizes and noise levels of the synthetic task (config key ``synthetic``)."""

    seed: int = 0
    n_sft_train: int = 3000
    n_sft_test: int = 200
    n_pref_train: int = 1200
    n_pref_test: int = 200
    min_items: int = 2
    max_items: int = 24
    # Item counts follow min_items + Geometric(p): most lists are short, a few are long, so the
    # p95 length cut truncates a real tail.
    length_geometric_p: float = 0.22
    flawed_demo_rate: float = 0.35
    # Share of demonstrations that stop one item short: above 0.5 the SFT model's greedy
    # answer stops early too, a systematic flaw (the kind SFT data carries) and a bad y_gen.
    truncated_demo_rate: float = 0.6
    # How often the preference pairs carry that flaw. Chosen answers flawed as often as the
    # demonstrations and rejected ones never: no pair teaches the flaw away, only y_gen shows
    # it (the DPPO premise). Chosen never and rejected half the time: the pairs already
    # correct y_gen's flaw (configs/pairs-correct-flaw.yaml).
    chosen_flaw_rate: float = 0.6
    rejected_flaw_rate: float = 0.0


@dataclass(frozen=True)
class DatasetSettings(Section):
    path: str = "synthetic"  # hub id, local directory in the hub layout, or "synthetic"
    train_split: str = "train"
    test_split: str = "test"
    name: str | None = None  # dataset config name (smoltalk needs "all")
    max_train_rows: int | None = None
    max_test_rows: int | None = None
    max_eval_prompts: int | None = None  # held-out prompts every model answers (None: all)

    def __post_init__(self):
        for name in ("max_train_rows", "max_test_rows", "max_eval_prompts"):
            check_int(name, getattr(self, name), minimum=1, optional=True)

    @property
    def is_synthetic(self) -> bool:
        return self.path == "synthetic"


@dataclass(frozen=True)
class DataSettings:
    sft: DatasetSettings = DatasetSettings()
    pref: DatasetSettings = DatasetSettings(train_split="train_prefs", test_split="test_prefs")
    max_len_percentile: float = 95.0  # cut at this percentile of the TRAIN split's token lengths
    overlong: str = "truncate"  # truncate | drop rows longer than the cut-off
    subset_seed: int = 0  # fixes which rows an n_train subset takes (subsets are nested)

    def __post_init__(self):
        check_number("max_len_percentile", self.max_len_percentile, above=0, maximum=100)
        check_choice("overlong", self.overlong, ("truncate", "drop"))
        check_int("subset_seed", self.subset_seed, minimum=0)

    @classmethod
    def from_dict(cls, values, where: str = "data") -> "DataSettings":
        values = dict(values or {})
        for kind in ("sft", "pref"):
            if kind in values:
                base = getattr(cls, kind)  # the dataclass default of that dataset
                values[kind] = parse(DatasetSettings, {**asdict(base), **dict(values[kind] or {})}, f"{where}.{kind}")
        return parse(cls, values, where)

    def to_dict(self) -> dict:
        return plain(self)


@dataclass(frozen=True)
class GenerationSettings(Section):
    """Greedy generation (y_gen and the evaluation answers) and the batch size of every
    inference pass (the reference log-probs too)."""

    backend: str = "transformers"  # transformers | vllm (runs in its own environment)
    # The vLLM environment's interpreter, for every section that runs vLLM (reward.engine: vllm
    # too); relative paths from the working directory. Checked before any job
    # (dppo.config.check_vllm_environments); `bash .ci/vllm_env.sh` builds it.
    vllm_python: str = ".venv-vllm/bin/python"
    batch_size: int = 64
    dtype: str = "auto"  # auto: bfloat16 on a GPU, float32 on CPU
    max_new_tokens: int | None = None  # None: the data's cut-off
    device: str | None = None  # None: cuda when available
    vllm_options: dict = field(default_factory=dict)  # extra vllm.LLM arguments

    def __post_init__(self):
        check_choice("backend", self.backend, GENERATION_BACKENDS)
        check_int("batch_size", self.batch_size, minimum=1)
        check_choice("dtype", self.dtype, DTYPES)
        check_int("max_new_tokens", self.max_new_tokens, minimum=1, optional=True)
        if not isinstance(self.vllm_options, Mapping):
            raise FieldError("vllm_options", f"must be a mapping, got {self.vllm_options!r}")


@dataclass(frozen=True)
class RewardSettings(Section):
    """The reward backend and, for the model backends (seqcls, nemotron), its options. The vLLM
    engine's environment is generation.vllm_python (one environment for vLLM, one key); the score
    job still imports vllm in its own interpreter (dppo.config.vllm_problem checks both)."""

    backend: str = "programmatic"  # programmatic | seqcls | nemotron
    model: str | None = None  # local directory or hub id (the model backends)
    engine: str = "transformers"  # transformers | vllm
    batch_size: int = 8
    # Longer chats keep their LAST max_length tokens (the response end is what the RM reads).
    max_length: int | None = None
    device: str = "auto"  # transformers: "auto" = cuda when available, else cpu
    device_map: str | None = None  # transformers: e.g. "auto" to shard a 70B model over the GPUs
    dtype: str = "auto"  # "auto" = the checkpoint's dtype; or float32 / bfloat16 / float16
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.9  # vllm

    def __post_init__(self):
        check_choice("backend", self.backend, REWARD_BACKENDS)
        check_choice("engine", self.engine, REWARD_ENGINES)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("max_length", self.max_length, minimum=2, optional=True)
        check_int("tensor_parallel_size", self.tensor_parallel_size, minimum=1)
        check_number("gpu_memory_utilization", self.gpu_memory_utilization, above=0, maximum=1)
        if self.backend != "programmatic" and not self.model:
            raise FieldError("model", f"reward backend {self.backend!r} needs a model (a local directory or hub id)")


@dataclass(frozen=True)
class WinRateSettings(Section):
    n_boot: int = 2000  # bootstrap resamples of the prompts
    seed: int = 0
    level: float = 0.95  # confidence level of the intervals
    baseline: str = "dpo"  # the experiment every other one is compared with, paired, prompt by prompt

    def __post_init__(self):
        check_int("n_boot", self.n_boot, minimum=10)
        check_int("seed", self.seed, minimum=0)
        check_number("level", self.level, above=0, maximum=0.999)


@dataclass(frozen=True)
class ClaimsSettings(Section):
    """Which experiments each of the poster's claims is tested on (named before the results
    are seen; None: the claim is not tested by this config), and the smallest difference in
    win rate that matters (an interval inside +-margin refutes "alpha matters")."""

    dppo: str | None = None  # the penalty variant "negative rewards decrease compared with DPO" is tested on
    small_subset: str | None = None  # unlikelihood on the small subset (vs DPO on every row: win_rate.baseline)
    chained: str | None = None  # unlikelihood on every row, then DPO on the subset
    margin: float = 0.03

    def __post_init__(self):
        check_number("margin", self.margin, above=0, maximum=1)


# World k adds k * WORLD_SEED_STRIDE to every seed of the pipeline (world 0 runs the seeds as
# written): seeds written below the stride never coincide across worlds.
WORLD_SEED_STRIDE = 1000


@dataclass(frozen=True)
class StudySettings(Section):
    """The study (``python -m dppo.study``): the pipeline replicated over ``worlds`` (each its own
    data draw, init and SFT model, y_gen, reference log-probs and training seeds) at each design
    of the pairs, compared over worlds (dppo.evaluate.study). A design names the shares of chosen
    and of rejected answers that carry y_gen's flaw (synthetic.chosen_flaw_rate,
    rejected_flaw_rate)."""

    worlds: int = 3
    designs: Mapping[str, tuple[float, float]] = field(default_factory=lambda: {"pairs_teach_it": (0.6, 0.0)})
    twin: str = "dpo_twin"  # DPO's twin (the same settings, other seeds): the A/A check
    dpo_groups: tuple[str, ...] = ("main", "dpo_tuning")  # DPO runs its best beta is chosen from
    dose_response: tuple[str, ...] = ()  # the experiments the dose-response figure draws
    split_seed: int = 0  # the validation / test split of each world's held-out prompts
    level: float = 0.95
    directory: str = "runs/study"

    def __post_init__(self):
        check_int("worlds", self.worlds, minimum=1)
        if not isinstance(self.designs, Mapping) or not self.designs:
            raise FieldError("designs", "name at least one design: {name: [chosen_flaw_rate, rejected_flaw_rate]}")
        designs = {}
        for name, rates in self.designs.items():
            if not isinstance(rates, (list, tuple)) or len(rates) != 2:
                raise FieldError(f"designs.{name}", f"must be [chosen_flaw_rate, rejected_flaw_rate], got {rates!r}")
            for rate in rates:
                check_number(f"designs.{name}", rate, minimum=0, maximum=1)
            designs[str(name)] = (float(rates[0]), float(rates[1]))
        object.__setattr__(self, "designs", designs)
        for name in ("dpo_groups", "dose_response"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_int("split_seed", self.split_seed, minimum=0)
        check_number("level", self.level, above=0, maximum=0.999)


@dataclass(frozen=True)
class InitialLevels(Section):
    """Toy step-1 target probabilities, per prompt: the optimal response gets ``chosen_*``, each
    of the four rejected responses ``rejected_*``, the rest is spread evenly over the others."""

    chosen_on: float = 0.3
    chosen_off: float = 0.03
    rejected_on: float = 0.1
    rejected_off: float = 0.01

    def __post_init__(self):
        for name in field_names(InitialLevels):
            check_number(name, getattr(self, name), above=0, maximum=1)


@dataclass(frozen=True)
class ToySettings:
    """The 3D-properties toy model (config key ``toy``); ``losses`` maps a label to its loss."""

    seeds: tuple[int, ...] = (0, 1, 2)
    hidden: int = 64
    sft_steps: int = 1000
    sft_lr: float = 1e-2
    steps: int = 600
    lr: float = 1e-3
    pairs_per_prompt: int = 8
    initial: InitialLevels = InitialLevels()
    losses: Mapping[str, LossSettings] = field(default_factory=lambda: {"dpo": LossSettings()})
    dynamics_loss: str = "dpo"  # the label of the loss the dynamics and gradient figures show
    # None: a full output layer (the seed's MLP); k: the output layer factorised through a rank-k
    # map shared by every response, so the responses share features (dispersion check)
    output_rank: int | None = None

    def __post_init__(self):
        if not self.seeds:
            raise FieldError("seeds", "name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):  # the paper counts the seeds
            raise FieldError("seeds", f"must be a list of distinct whole numbers, got {list(self.seeds)!r}")
        for seed in self.seeds:
            check_int("seeds", seed, minimum=0)
        for name in ("hidden", "sft_steps", "steps", "pairs_per_prompt"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("sft_lr", "lr"):
            check_number(name, getattr(self, name), above=0)
        check_int("output_rank", self.output_rank, minimum=1, optional=True)
        if not self.losses:
            raise FieldError("losses", "name at least one loss to train")
        if self.dynamics_loss not in self.losses:
            raise FieldError("dynamics_loss", f"{self.dynamics_loss!r} is not a label of toy.losses ({', '.join(self.losses)})")

    @classmethod
    def from_dict(cls, values, where: str = "toy") -> "ToySettings":
        values = dict(values or {})
        if "seeds" in values:
            values["seeds"] = tuple(values["seeds"])
        if "initial" in values:
            values["initial"] = InitialLevels.from_dict(values["initial"], f"{where}.initial")
        if "losses" in values:
            values["losses"] = {label: LossSettings.from_dict(spec, f"{where}.losses.{label}")
                                for label, spec in dict(values["losses"] or {}).items()}
        return parse(cls, values, where)

    def to_dict(self) -> dict:
        values = plain(self)
        values["losses"] = {label: loss.to_dict() for label, loss in self.losses.items()}
        return values


@dataclass(frozen=True)
class PaperSettings(Section):
    # Words describing the set-up (macro name -> text), e.g. setupModel: "a tiny Llama".
    setup: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Resources(Section):
    """One rule's resources (SLURM): the config's ``resources.default`` then the rule's entry."""

    gpu: int = 0
    cpus_per_task: int = 1
    mem_mb: int = 4000
    runtime: int = 30  # minutes
    gpu_model: str | None = None
    slurm_extra: str | None = None

    def to_dict(self) -> dict:
        # The executor plugin reads a key's presence: an unset optional key is left out.
        return {k: v for k, v in plain(self).items() if v is not None}


@dataclass(frozen=True)
class PipelineSettings:
    """The whole config, parsed and checked once (:func:`dppo.config.load_settings`)."""

    model: ModelSettings
    tiny_model: TinyModelSpec
    synthetic: TaskSpec
    data: DataSettings
    sft: OptimSettings
    generation: GenerationSettings
    experiments: Mapping[str, Experiment]
    reward: RewardSettings
    win_rate: WinRateSettings
    claims: ClaimsSettings
    toy: ToySettings | None
    paper: PaperSettings
    resources: Mapping[str, Mapping[str, Any]]  # rule name -> the config's entry ("default" too)
    study: StudySettings
    world: int = 0  # a replicate of the whole pipeline (its seeds shifted: in_world)

    def in_world(self, world: int) -> "PipelineSettings":
        """These settings in world ``world``: every seed that draws data, initialises or trains
        a model (the synthetic task, the tiny model, SFT, the subset of n_train runs, each
        experiment's seeds) shifted by ``world * WORLD_SEED_STRIDE``; the toy keeps its own."""
        check_int("world", world, minimum=0)
        shift = world * WORLD_SEED_STRIDE
        experiments = {name: replace(e, seeds=tuple(s + shift for s in e.seeds)) for name, e in self.experiments.items()}
        return replace(
            self, world=world, experiments=experiments,
            synthetic=replace(self.synthetic, seed=self.synthetic.seed + shift),
            tiny_model=replace(self.tiny_model, seed=self.tiny_model.seed + shift),
            sft=replace(self.sft, seed=self.sft.seed + shift),
            data=replace(self.data, subset_seed=self.data.subset_seed + shift),
        )

    def training_priority(self, name: str) -> int:
        """Scheduling priority of experiment ``name``'s training job: experiments that others
        start from first (their dependents wait on them), then those with more seeds (longest
        first), so that no long job is left to run alone at the end."""
        dependents = sum(1 for other in self.experiments.values() if other.init == name)
        return 100 * dependents + len(self.experiments[name].seeds)

    def resources_for(self, rule: str) -> dict:
        """Resources of ``rule``: the defaults here, ``resources.default``, then the rule's own."""
        table = self.resources
        return Resources(**{**table.get("default", {}), **table.get(rule, {})}).to_dict()
