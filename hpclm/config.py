"""Typed configuration: dataclasses with defaults, TOML experiment files, `--set a.b=v` overrides.

Every key is type-checked and unknown keys are rejected with the list of valid ones. The resolved
config (after file and overrides) is stored in every checkpoint and timing record.
"""
import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass, field, fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from hpclm.errors import UserError


@dataclass
class ModelConfig:
    vocab_size: int = 0          # 0 = taken from the tokenizer at train time
    block_size: int = 64         # T, the context length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128            # C
    tie_weights: bool = True     # output head shares wte (GPT-2); False = separate lm_head.weight (C, V)

    def validate(self):
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise UserError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise UserError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")


@dataclass
class DataConfig:
    path: str = ""               # text file; "" = the built-in generated corpus
    tokenizer: str = "char"      # char | byte
    val_fraction: float = 0.1    # the last fraction of the token stream is the validation split
    cache_dir: str = ""          # where token arrays are cached; "" = ~/.cache/hpclm
    builtin_chars: int = 1_000_000  # size of the built-in corpus

    def validate(self):
        if self.tokenizer not in ("char", "byte"):
            raise UserError(f"data.tokenizer must be 'char' or 'byte', got {self.tokenizer!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.builtin_chars < 1000:
            raise UserError(f"data.builtin_chars must be >= 1000, got {self.builtin_chars}")


@dataclass
class OptimConfig:
    name: str = "adamw"          # sgd | momentum | adamw
    lr: float = 1e-3             # peak learning rate
    min_lr: float = 1e-4         # floor of the cosine decay
    warmup_steps: int = 100
    decay_steps: int = 0         # cosine decay length; 0 = train.max_steps
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1    # decoupled, on 2-D weights only
    momentum: float = 0.9        # for name = momentum
    nesterov: bool = False
    grad_clip: float = 1.0       # global-norm clip; 0 = off
    freeze_variance_step: int = 0  # adamw: second moment frozen after this many updates (1-bit Adam); 0 = never

    def validate(self):
        if self.name not in ("sgd", "momentum", "adamw"):
            raise UserError(f"optim.name must be one of sgd, momentum, adamw; got {self.name!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise UserError(f"need 0 <= optim.min_lr <= optim.lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})")
        if self.warmup_steps < 0 or self.decay_steps < 0 or self.freeze_variance_step < 0:
            raise UserError("optim.warmup_steps, optim.decay_steps and optim.freeze_variance_step must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError("optim.beta1 and optim.beta2 must be in [0, 1)")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise UserError("optim.grad_clip and optim.weight_decay must be >= 0")


@dataclass
class TrainConfig:
    max_steps: int = 2000
    batch_size: int = 12         # global batch in sequences per optimizer step
    grad_accum: int = 1          # micro-batches per step (per rank)
    eval_interval: int = 250     # evaluate every N steps (and at the end); 0 = only at the end
    eval_batches: int = 20       # validation batches per evaluation
    log_interval: int = 10
    checkpoint_interval: int = 0  # save every N steps (and at the end); 0 = only at the end
    seed: int = 1337
    dtype: str = "float32"       # float32 | float64
    device: str = "cpu"          # cpu | gpu
    threads: int = 0             # CPU threads per rank running batch row slices; 0 = cores / local ranks
    kernels: str = "auto"        # auto | numba | numpy: compiled CPU kernels (hpclm.kernels); auto = numba if it imports
    out_dir: str = "runs/default"
    timing: bool = True          # write RUN_DIR/timing.h5 (per-rank, per-step times and bytes)
    timing_flush: int = 10       # gather + flush the timing record every N steps
    trace: str = ""              # "START:STOP" steps to record as a Chrome trace (RUN_DIR/trace.json)
    run_ahead: bool = True       # asynchronous strategies (ps async/ssp, gossip adpsgd): a rank whose step of
                                 # a round is done keeps training until every rank has finished the round
                                 # (false: it waits); max_steps then counts rounds

    def validate(self):
        for name in ("max_steps", "batch_size", "grad_accum", "eval_batches", "log_interval", "timing_flush"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_interval", "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"train.dtype must be float32 or float64, got {self.dtype!r}")
        if self.device not in ("cpu", "gpu"):
            raise UserError(f"train.device must be cpu or gpu, got {self.device!r}")
        if self.threads < 0:
            raise UserError(f"train.threads must be >= 0, got {self.threads}")
        if self.kernels not in ("auto", "numba", "numpy"):
            raise UserError(f"train.kernels must be auto, numba or numpy, got {self.kernels!r}")
        if self.trace and not re.fullmatch(r"\d+:\d+", self.trace):
            raise UserError(f"train.trace must look like START:STOP (steps), got {self.trace!r}")
        if self.batch_size % self.grad_accum:
            raise UserError(f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum})")


@dataclass
class CommConfig:
    algorithm: str = "mpi"       # all-reduce algorithm for gradients, see hpclm.comm.ALGORITHMS
    cuda_aware: str = "auto"     # auto | on | off: hand device buffers to MPI directly
    bucket_mb: float = 4.0       # gradient bucket size in MiB; 0 = one all-reduce after backward
    overlap: bool = True         # start each bucket's all-reduce as soon as backward has finished it
    check_every: int = 100       # verify every N steps that parameters are identical on all ranks; 0 = never

    def validate(self):
        if self.bucket_mb < 0 or self.check_every < 0:
            raise UserError("comm.bucket_mb and comm.check_every must be >= 0")
        if self.cuda_aware not in ("auto", "on", "off"):
            raise UserError(f"comm.cuda_aware must be auto, on or off; got {self.cuda_aware!r}")


@dataclass
class CompressConfig:
    name: str = "none"           # compressor, see hpclm.compress.REGISTRY
    error_feedback: str = "auto"  # auto (on where the literature uses it) | on | off
    density: float = 0.01        # topk / randomk: fraction of elements sent
    topk_method: str = "sampled"  # sampled (DGC's threshold estimate; the exact set, faster) | exact
    sparse_format: str = "compact"  # topk / threshold wire: compact (fp16 + uint16, ~4 B/element)
                                    # | plain (values + int32 indices)
    threshold: float = 1e-3      # threshold: send elements with |g| > threshold
    levels: int = 16             # qsgd: quantization levels s
    block: int = 256             # int8: elements per scale block
    powersgd_rank: int = 4       # powersgd: rank r of the factors
    clusters: int = 16           # kmeans: k centroids (log2(k) bits per element)
    momentum_correction: bool = False  # DGC: accumulate velocity, not gradients, in the residual
    factor_masking: bool = False       # DGC: clear momentum where an element was sent
    momentum: float = 0.9        # DGC momentum factor
    seed: int = 0                # shared seed for randomized compressors (same on every rank)
    exchange: str = "auto"       # how payloads travel: auto (by compressor) | sum | gather | vote | vote_gather | onebit
    warmup_steps: int = 0        # average uncompressed for the first N steps (DGC / 1-bit Adam warm-up)
    onebit_adam: bool = False    # 1-bit Adam: after warmup_steps, AdamW's momentum (not the gradient)
                                 # goes through the 1-bit all-reduce (needs ef_sign/onebit, adamw and
                                 # 1 <= optim.freeze_variance_step <= warmup_steps)

    def validate(self):
        if self.warmup_steps < 0:
            raise UserError(f"compress.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.error_feedback not in ("auto", "on", "off"):
            raise UserError(f"compress.error_feedback must be auto, on or off; got {self.error_feedback!r}")
        if not 0.0 < self.density <= 1.0:
            raise UserError(f"compress.density must be in (0, 1], got {self.density}")
        if self.exchange not in ("auto", "sum", "gather", "vote", "vote_gather", "onebit"):
            raise UserError(f"compress.exchange must be auto, sum, gather, vote, vote_gather or onebit; "
                            f"got {self.exchange!r}")
        if self.topk_method not in ("exact", "sampled"):
            raise UserError(f"compress.topk_method must be exact or sampled, got {self.topk_method!r}")
        if self.sparse_format not in ("compact", "plain"):
            raise UserError(f"compress.sparse_format must be compact or plain, got {self.sparse_format!r}")
        for name in ("levels", "block", "powersgd_rank"):
            if getattr(self, name) < 1:
                raise UserError(f"compress.{name} must be >= 1, got {getattr(self, name)}")
        if self.clusters < 2 or self.clusters > 256 or self.clusters & (self.clusters - 1):
            raise UserError(f"compress.clusters must be a power of two in [2, 256] (codes are bytes), "
                            f"got {self.clusters}")


@dataclass
class ParallelConfig:
    dp: int = 0                  # data-parallel ranks; 0 = world size / (tp * pp)
    tp: int = 1                  # tensor-parallel ranks per model replica
    pp: int = 1                  # pipeline stages
    zero: int = 0                # ZeRO stage over the dp group: 0 off, 1 optimizer state, 2 + gradients, 3 + parameters
    micro_batches: int = 1       # pipeline micro-batches per step (per dp rank; without a pipeline: more accumulation)
    schedule: str = "1f1b"       # pipeline schedule: gpipe | 1f1b | interleaved
    chunks: int = 1              # model chunks (virtual stages) per pipeline rank: >= 2 with interleaved, else 1
    stage_layers: str = ""       # blocks per pipeline stage (virtual stage: pp x chunks entries), e.g. "3,1"; "" = balanced
    recompute: str = "none"      # activation recomputation: none | block (keep block inputs, rerun forward in backward)
    sync: str = "allreduce"      # how dp replicas agree: allreduce | ps | gossip | local ([ps], [gossip], [local])
    sequence_parallel: bool = False  # tp > 1: LayerNorms and residuals on token-row shards (Korthikanti et al. 2022)

    def validate(self):
        for name in ("tp", "pp", "micro_batches", "chunks"):
            if getattr(self, name) < 1:
                raise UserError(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        if self.dp < 0:
            raise UserError(f"parallel.dp must be >= 0 (0 = world size / (tp * pp)), got {self.dp}")
        if self.zero not in (0, 1, 2, 3):
            raise UserError(f"parallel.zero must be 0, 1, 2 or 3, got {self.zero}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"parallel.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.recompute not in RECOMPUTE:
            raise UserError(f"parallel.recompute must be one of {', '.join(RECOMPUTE)}, got {self.recompute!r}")
        if self.sync not in SYNCS:
            raise UserError(f"parallel.sync must be one of {', '.join(SYNCS)}, got {self.sync!r}")
        if self.schedule == "interleaved" and self.chunks < 2:
            raise UserError("parallel.schedule=interleaved needs parallel.chunks >= 2 (model chunks per pipeline "
                            "rank; one chunk per rank is parallel.schedule=1f1b)")
        if self.schedule != "interleaved" and self.chunks != 1:
            raise UserError(f"parallel.chunks={self.chunks} needs parallel.schedule=interleaved ({self.schedule} runs "
                            f"one model chunk per pipeline rank)")
        if self.stage_layers and not re.fullmatch(r"\d+(,\d+)*", self.stage_layers):
            raise UserError(f"parallel.stage_layers must look like 2,2 (blocks per stage), got {self.stage_layers!r}")
        if self.pp > 1 and self.zero > 1:
            raise UserError(f"parallel.zero={self.zero} with parallel.pp > 1 is not built: the pipeline combines "
                            f"with ZeRO-1 only (parallel.zero = 1)")
        if self.tp > 1 and self.pp > 1 and (self.zero or self.recompute != "none"):
            raise UserError("the dp x tp x pp grid (tp > 1 and pp > 1) runs without parallel.zero and "
                            "parallel.recompute for now")

    def stage_layer_counts(self):
        """[blocks of each stage] from stage_layers, or None for balanced stages."""
        return [int(n) for n in self.stage_layers.split(",")] if self.stage_layers else None


SCHEDULES = ("gpipe", "1f1b", "interleaved")
SYNCS = ("allreduce", "ps", "gossip", "local")
RECOMPUTE = ("none", "block")


@dataclass
class PSConfig:
    """parallel.sync = ps: S server ranks hold the parameter shards and their optimizer state."""
    servers: int = 1             # S: ranks that serve; the other world - S ranks work
    mode: str = "sync"           # sync | async | ssp
    staleness: int = 0           # ssp: a worker at most this many steps ahead of the slowest
    pull_dtype: str = "float32"  # parameters sent back to workers: float32 (the model dtype) | float16

    def validate(self):
        if self.servers < 1:
            raise UserError(f"ps.servers must be >= 1, got {self.servers}")
        if self.mode not in PS_MODES:
            raise UserError(f"ps.mode must be one of {', '.join(PS_MODES)}, got {self.mode!r}")
        if self.staleness < 0:
            raise UserError(f"ps.staleness must be >= 0, got {self.staleness}")
        if self.pull_dtype not in ("float32", "float16"):
            raise UserError(f"ps.pull_dtype must be float32 or float16, got {self.pull_dtype!r}")


PS_MODES = ("sync", "async", "ssp")


@dataclass
class GossipConfig:
    """parallel.sync = gossip: every rank averages with its neighbours on a topology."""
    topology: str = "ring"       # ring | torus | exp2 | one_peer_exp | star | fully_connected
    algorithm: str = "dpsgd"     # dpsgd (combine then adapt) | dpsgd_atc (adapt then combine) | adpsgd
    consensus_every: int = 10    # steps between consensus-distance measurements (0: never)

    def validate(self):
        if self.topology not in TOPOLOGIES:
            raise UserError(f"gossip.topology must be one of {', '.join(TOPOLOGIES)}, got {self.topology!r}")
        if self.algorithm not in GOSSIP_ALGORITHMS:
            raise UserError(f"gossip.algorithm must be one of {', '.join(GOSSIP_ALGORITHMS)}, "
                            f"got {self.algorithm!r}")
        if self.consensus_every < 0:
            raise UserError(f"gossip.consensus_every must be >= 0, got {self.consensus_every}")


TOPOLOGIES = ("ring", "torus", "exp2", "one_peer_exp", "star", "fully_connected")
GOSSIP_ALGORITHMS = ("dpsgd", "dpsgd_atc", "adpsgd")


@dataclass
class LocalConfig:
    """parallel.sync = local: H steps alone, then the replicas are averaged (local SGD) or their
    averaged pseudo-gradient drives an outer optimizer (DiLoCo)."""
    steps: int = 4               # H: local steps between synchronisations
    warmup_steps: int = 0        # post-local SGD: synchronise every step for the first K steps
    outer: str = "average"       # average (local SGD) | diloco (outer Nesterov SGD on the pseudo-gradient)
    outer_lr: float = 0.7        # diloco: outer learning rate
    outer_momentum: float = 0.9  # diloco: outer Nesterov momentum (0: plain SGD)

    def validate(self):
        if self.steps < 1:
            raise UserError(f"local.steps must be >= 1, got {self.steps}")
        if self.warmup_steps < 0:
            raise UserError(f"local.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.outer not in ("average", "diloco"):
            raise UserError(f"local.outer must be average or diloco, got {self.outer!r}")
        if self.outer_lr <= 0:
            raise UserError(f"local.outer_lr must be > 0, got {self.outer_lr}")
        if not 0 <= self.outer_momentum < 1:
            raise UserError(f"local.outer_momentum must be in [0, 1), got {self.outer_momentum}")

    def check_combination(self, cfg):
        """UserError for what parallel.sync = local does not run with."""
        p, c = cfg.parallel, cfg.compress
        for what, used in (("parallel.zero", p.zero), ("parallel.tp > 1", p.tp > 1), ("parallel.pp > 1", p.pp > 1),
                           ("compress.onebit_adam", c.onebit_adam),
                           ("compress.warmup_steps (local.warmup_steps is its warm-up)", c.warmup_steps)):
            if used:
                raise UserError(f"parallel.sync=local does not run with {what}")
        if c.name != "none" and self.outer != "diloco":
            raise UserError(f"parallel.sync=local compresses DiLoCo's pseudo-gradient only: compress.name={c.name} "
                            f"needs local.outer=diloco (outer_lr=1, outer_momentum=0 is local SGD)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    ps: PSConfig = field(default_factory=PSConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    local: LocalConfig = field(default_factory=LocalConfig)

    def validate(self):
        for f in fields(self):
            getattr(self, f.name).validate()
        p = self.parallel
        stages = p.pp * p.chunks                               # virtual stages
        if p.pp > 1 and not p.stage_layers and stages > self.model.n_layer:
            what = f"parallel.pp ({p.pp})" + (f" x parallel.chunks ({p.chunks})" if p.chunks > 1 else "")
            raise UserError(f"{what} is larger than model.n_layer ({self.model.n_layer}): "
                            f"every stage needs at least one block")
        if p.stage_layers and (len(p.stage_layer_counts()) != stages or sum(p.stage_layer_counts()) != self.model.n_layer
                               or min(p.stage_layer_counts()) < 1):
            what = f"{stages} stages" + (" (parallel.pp x parallel.chunks)" if p.chunks > 1 else "")
            raise UserError(f"parallel.stage_layers ({p.stage_layers}) must give each of the {what} at least "
                            f"one block and sum to model.n_layer ({self.model.n_layer})")
        if p.pp > 1 and p.schedule == "interleaved" and p.micro_batches % p.pp:
            raise UserError(f"parallel.schedule=interleaved needs parallel.micro_batches ({p.micro_batches}) to be a "
                            f"multiple of parallel.pp ({p.pp})")
        if p.pp > 1 and self.train.grad_accum > 1:
            raise UserError("with parallel.pp > 1 use parallel.micro_batches, not train.grad_accum")
        if p.pp > 1 and self.compress.onebit_adam:
            raise UserError("compress.onebit_adam with parallel.pp > 1 is not built yet")
        if p.sync == "gossip" and (p.tp > 1 or p.pp > 1 or p.zero or self.compress.name != "none"
                                   or self.compress.onebit_adam or self.train.device != "cpu"):
            raise UserError("parallel.sync=gossip averages whole models on the host: it needs parallel.tp = 1, "
                            "parallel.pp = 1, parallel.zero = 0, compress.name = none and train.device = cpu")
        if self.parallel.tp > 1:                               # tensor parallelism splits heads and the MLP
            from hpclm.model.tensor_parallel import check_divisible
            check_divisible(self.model, self.parallel.tp)
            if self.parallel.sequence_parallel and self.model.block_size % self.parallel.tp:
                raise UserError(f"parallel.sequence_parallel needs parallel.tp={self.parallel.tp} to divide "
                                f"model.block_size={self.model.block_size}")
        if p.sync == "local":
            self.local.check_combination(self)
        if self.parallel.zero and self.compress.name != "none":
            raise UserError(f"parallel.zero={self.parallel.zero} with compress.name={self.compress.name!r}: "
                            "ZeRO shards uncompressed gradients; use one or the other")
        return self

    def micro_batches(self):
        """Micro-batches per step per data-parallel rank: train.grad_accum x parallel.micro_batches
        (a pipeline runs the latter through its schedule; the rest run them one after another)."""
        return self.train.grad_accum * self.parallel.micro_batches

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)


def _coerce(value, typ, where):
    """Check `value` against the field type; ints are accepted for floats. Returns the typed value."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, float):
            raise UserError(f"{where}: expected a finite float, got {value!r}")
    elif typ is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")


def _parse_scalar(text, typ, where):
    """Parse a command-line value for a field of type `typ`."""
    if typ is str:
        return text
    if typ is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{where}: expected true or false, got {text!r}")
    try:
        value = typ(text) if typ is float else int(text, 0)
    except ValueError:
        raise UserError(f"{where}: expected {typ.__name__}, got {text!r}") from None
    if typ is float and not math.isfinite(value):      # as in a TOML file: nan and inf are not values
        raise UserError(f"{where}: expected a finite float, got {text!r}")
    return value


def _section(cfg, name, where):
    names = [f.name for f in fields(cfg)]
    if name not in names:
        raise UserError(f"{where}: unknown section {name!r}; valid sections: {', '.join(names)}")
    return getattr(cfg, name)


def _field_type(section_obj, section, key, where):
    types = {f.name: f.type for f in fields(section_obj)}
    if (section, key) in RENAMED:
        raise UserError(f"{where}: {section}.{key} is now called {section}.{RENAMED[(section, key)]}")
    if key not in types:
        raise UserError(f"{where}: unknown key {section}.{key}; valid keys of [{section}]: {', '.join(types)}")
    typ = types[key]
    return eval(typ) if isinstance(typ, str) else typ  # noqa: S307  (annotations are builtin names)


def apply_dict(cfg, data, where="config"):
    """Set values from a nested mapping {section: {key: value}}, with type checks."""
    for section, values in data.items():
        obj = _section(cfg, section, where)
        if not isinstance(values, dict):
            raise UserError(f"{where}: [{section}] must be a table of key = value")
        for key, value in values.items():
            typ = _field_type(obj, section, key, where)
            setattr(obj, key, _coerce(value, typ, f"{where}: {section}.{key}"))
    return cfg


def apply_override(cfg, assignment):
    """Apply one `section.key=value` override from the command line."""
    where = f"--set {assignment}"
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise UserError(f"{where}: expected section.key=value, e.g. model.n_layer=6")
    path, text = assignment.split("=", 1)
    section, key = path.strip().split(".", 1)
    obj = _section(cfg, section, where)
    typ = _field_type(obj, section, key, where)
    setattr(obj, key, _parse_scalar(text.strip(), typ, where))
    return cfg


def load_toml(path):
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not a text (UTF-8) file, so not TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None


def build_config(toml_path=None, overrides=(), base=None):
    """Defaults <- TOML file <- `--set` overrides, then validate. Raises UserError on any problem."""
    cfg = base if base is not None else Config()
    if toml_path:
        apply_dict(cfg, load_toml(toml_path), where=str(toml_path))
    for assignment in overrides:
        apply_override(cfg, assignment)
    return cfg.validate()


RENAMED = {("compress", "rank"): "powersgd_rank"}    # keys stored by earlier versions -> today's


def config_from_json(text):
    """The Config stored in a checkpoint or timing record (keys of earlier versions renamed)."""
    data = json.loads(text)
    for (section, old), new in RENAMED.items():
        if old in data.get(section, {}):
            data[section][new] = data[section].pop(old)
    return apply_dict(Config(), data, where="stored config").validate()
