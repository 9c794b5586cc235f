"""The one implementation of the diffusion noise schedule and sampler maths (numpy only).

Both the PyTorch generator (`generation_torch`) and the onnxruntime sampler (`exporters`) use it, so the
two can never disagree. Coefficients are computed in float64 numpy and handed to the update formulas as
Python floats; the formulas use plain arithmetic only (`+ - *`, `.clip`), so `x` may be a numpy array
or a torch tensor alike.

Conventions (DDPM, Ho et al. 2020):
    abar[t] = prod_{i<=t} (1 - beta[i]),  t = 0 .. T-1 (T = 1000 training steps)
    x_t = sqrt(abar[t]) * x0 + sqrt(1 - abar[t]) * eps                          (q_sample)
    v   = sqrt(abar[t]) * eps - sqrt(1 - abar[t]) * x0                          (v-prediction)
A sampler walks a descending list of timesteps t_0 > t_1 > ... > t_{n-1} and finally to "t = -1",
where abar = 1 (clean data), so its last update returns the model's x0 estimate.

API
    Schedule.make(kind, timesteps)          'linear' | 'cosine' -> betas, abar (float64 arrays)
    Schedule.to_config() / from_config(d)   the schedule as plain values (checkpoints, ONNX metadata)
    q_sample(x0, noise, a, s)               forward noising, a = sqrt(abar_t), s = sqrt(1 - abar_t)
    split_prediction(pred, x_t, a, s, kind) model output ('eps' | 'v') -> (x0, eps)
    target_for(x0, noise, a, s, kind)       training target for 'eps' | 'v'
    guided(cond, uncond, scale, rescale)    classifier-free guidance (optionally std-rescaled)
    guided_model(denoise, cond, null, ...)  model_fn with guidance: one or two condition halves per call
    sampler_timesteps(n, T)                 evenly spaced descending timesteps (DDPM, DDIM)
    logsnr_timesteps(n, schedule)           timesteps evenly spaced in log-SNR (DPM-Solver++)
    partial_timesteps(ts, strength)         the last steps of a walk (starting from a noised image)
    ddpm_step / ddim_step / dpmpp_2m_step   one update each
    sample(model_fn, x_T, schedule, ...)    the whole loop; model_fn(x, t: int) -> prediction;
                                            with init and strength < 1 it starts from init noised by x_T
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TIMESTEPS = 1000
SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
SAMPLERS = ("ddpm", "ddim", "dpmpp2m")
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpmpp2m": 20}

Array = Any  # a numpy array or a torch tensor: only arithmetic is used on it
ModelFn = Callable[[Array, int], Array]
NoiseFn = Callable[[Array], Array]  # returns standard normal noise shaped like its argument


def linear_betas(timesteps: int = TIMESTEPS, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule, scaled so other lengths keep the same total noise (Nichol & Dhariwal)."""
    scale = 1000.0 / timesteps
    return np.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=np.float64)


def cosine_betas(timesteps: int = TIMESTEPS, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved-DDPM cosine schedule: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2)."""
    def f(t: np.ndarray) -> np.ndarray:
        return np.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2

    t = np.arange(timesteps, dtype=np.float64)
    return np.minimum(1.0 - f(t + 1) / f(t), max_beta)


# the parameters of each schedule kind: the keyword arguments of its betas function
SCHEDULE_PARAMETERS = {"linear": {"beta_start": 1e-4, "beta_end": 0.02},
                       "cosine": {"s": 0.008, "max_beta": 0.999}}
_BETAS = {"linear": linear_betas, "cosine": cosine_betas}


@dataclass(frozen=True)
class Schedule:
    """betas and their cumulative products for `timesteps` training steps (float64)."""

    kind: str
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    parameters: dict[str, float] = field(default_factory=dict)

    @classmethod
    def make(cls, kind: str = "linear", timesteps: int = TIMESTEPS, **parameters: float) -> Schedule:
        """A schedule; `parameters` override SCHEDULE_PARAMETERS[kind] (e.g. beta_end for 'linear')."""
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r} (choose from {', '.join(SCHEDULES)})")
        unknown = set(parameters) - set(SCHEDULE_PARAMETERS[kind])
        if unknown:
            raise ValueError(f"{kind} schedule has no parameter {', '.join(sorted(unknown))}")
        params = {**SCHEDULE_PARAMETERS[kind], **{k: float(v) for k, v in parameters.items()}}
        betas = _BETAS[kind](timesteps, **params)
        return cls(kind, betas, np.cumprod(1.0 - betas), params)

    def to_config(self) -> dict[str, object]:
        """Everything that rebuilds this schedule, as plain values: the generator checkpoint's
        "diffusion" entry and the ONNX metadata both hold exactly this."""
        return {"schedule": self.kind, "timesteps": self.timesteps,
                "schedule_parameters": dict(self.parameters)}

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Schedule:
        """Inverse of to_config. Values may be strings (ONNX metadata_props: parameters as JSON);
        configs written before schedule_parameters existed get the kind's defaults."""
        params = config.get("schedule_parameters") or {}
        if isinstance(params, str):
            params = json.loads(params)
        return cls.make(str(config["schedule"]), int(config["timesteps"]), **params)  # type: ignore[arg-type]

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    def abar(self, t: int) -> float:
        """abar at integer t; t = -1 means clean data (abar = 1)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def coefficients(self, t: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sqrt(abar[t]), sqrt(1 - abar[t])) for an integer or integer array t (float64)."""
        abar = self.alphas_cumprod[np.asarray(t)]
        return np.sqrt(abar), np.sqrt(1.0 - abar)


# -- forward process and parameterizations ------------------------------------------------------
def q_sample(x0: Array, noise: Array, a: float | Array, s: float | Array) -> Array:
    """x_t = a * x0 + s * noise with a = sqrt(abar_t), s = sqrt(1 - abar_t) (floats or broadcastable)."""
    return a * x0 + s * noise


def target_for(x0: Array, noise: Array, a: float | Array, s: float | Array, kind: str) -> Array:
    """What the denoiser learns to output: the noise ('eps') or v = a * eps - s * x0 ('v')."""
    if kind == "eps":
        return noise
    if kind == "v":
        return a * noise - s * x0
    raise ValueError(f"unknown prediction {kind!r} (choose from {', '.join(PREDICTIONS)})")


def loss_weight(a: float | Array, s: float | Array, kind: str, gamma: float | None) -> float | Array:
    """Per-sample weight of the denoising loss: 1 (uniform), or Min-SNR-gamma (Hang et al. 2023):
    min(SNR, gamma) / SNR for eps targets, min(SNR, gamma) / (SNR + 1) for v, with SNR = a^2 / s^2.
    It stops the many nearly clean timesteps from dominating the gradient, so the noisy ones, where
    the layout (where the mask's objects go) is decided, are learned sooner."""
    if gamma is None:
        return 1.0
    snr = (a * a) / (s * s)
    clipped = 0.5 * (snr + gamma - abs(snr - gamma))  # min(snr, gamma) with arithmetic only
    if kind == "eps":
        return clipped / snr
    if kind == "v":
        return clipped / (snr + 1.0)
    raise ValueError(f"unknown prediction {kind!r} (choose from {', '.join(PREDICTIONS)})")


def split_prediction(pred: Array, x_t: Array, a: float, s: float, kind: str) -> tuple[Array, Array]:
    """Model output -> (x0 estimate, eps estimate), using a^2 + s^2 = 1."""
    if kind == "eps":
        return (x_t - s * pred) * (1.0 / a), pred
    if kind == "v":
        return a * x_t - s * pred, s * x_t + a * pred
    raise ValueError(f"unknown prediction {kind!r} (choose from {', '.join(PREDICTIONS)})")


def guided(cond: Array, uncond: Array, scale: float, rescale: float = 0.0) -> Array:
    """Classifier-free guidance: uncond + scale * (cond - uncond). scale 1 = conditional model only,
    scale 0 = unconditional. rescale phi in [0, 1] (Lin et al. 2024, "Common diffusion noise schedules
    and sample steps are flawed", eq. 15-16): blend in the guided output scaled per sample to the
    standard deviation of the conditional one, which tames the over-saturated contrast that large
    scales draw; 0 = plain guidance."""
    out = uncond + scale * (cond - uncond)
    if rescale == 0.0:
        return out
    ratio = per_sample_std(cond) / per_sample_std(out)
    return rescale * (out * ratio) + (1.0 - rescale) * out


def guided_model(denoise: Callable[[Array, Array, int], Array], cond: Array, null: Array, scale: float,
                 rescale: float, concat: Callable[[list[Array]], Array]) -> ModelFn:
    """model_fn(x, t) for `sample` from denoise(x, cond, t): scale 1 runs the conditioned model only,
    0 the null-conditioned one only, any other scale both halves in one batch, combined by `guided`.
    concat joins arrays along the batch axis (np.concatenate or torch.cat)."""
    both_cond = concat([cond, null]) if scale not in (0.0, 1.0) else None

    def fn(x: Array, t: int) -> Array:
        if both_cond is None:
            return denoise(x, cond if scale == 1.0 else null, t)
        both = denoise(concat([x, x]), both_cond, t)
        return guided(both[:len(x)], both[len(x):], scale, rescale)

    return fn


def per_sample_std(x: Array) -> Array:
    """Population standard deviation over all but the first axis, shaped to broadcast against x
    (plain arithmetic, so numpy arrays and torch tensors alike)."""
    flat = x.reshape(len(x), -1)
    mean = flat.mean(1).reshape(-1, 1)
    std = (((flat - mean) ** 2).mean(1) + 1e-12) ** 0.5
    return std.reshape(-1, *([1] * (len(x.shape) - 1)))


# -- one update each ----------------------------------------------------------------------------
def ddpm_posterior(abar_t: float, abar_s: float) -> tuple[float, float, float]:
    """q(x_s | x_t, x0) for s < t (s = t-1 in plain DDPM): (coef of x0, coef of x_t, variance)."""
    alpha = abar_t / abar_s
    beta = 1.0 - alpha
    c_x0 = math.sqrt(abar_s) * beta / (1.0 - abar_t)
    c_xt = math.sqrt(alpha) * (1.0 - abar_s) / (1.0 - abar_t)
    return c_x0, c_xt, (1.0 - abar_s) / (1.0 - abar_t) * beta


def ddpm_step(x_t: Array, x0: Array, abar_t: float, abar_s: float, noise: Array | None) -> Array:
    """Ancestral step x_t -> x_s: posterior mean + posterior std * noise (no noise when abar_s = 1)."""
    c_x0, c_xt, var = ddpm_posterior(abar_t, abar_s)
    mean = c_x0 * x0 + c_xt * x_t
    return mean if noise is None or var <= 0.0 else mean + math.sqrt(var) * noise


def ddim_sigma(abar_t: float, abar_s: float, eta: float) -> float:
    """DDIM's noise level; eta = 1 gives exactly the DDPM posterior std, eta = 0 is deterministic."""
    return eta * math.sqrt((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s))


def ddim_step(x0: Array, eps: Array, abar_t: float, abar_s: float, eta: float,
              noise: Array | None) -> Array:
    """x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma noise (Song et al. eq. 12)."""
    sigma = ddim_sigma(abar_t, abar_s, eta)
    out = math.sqrt(abar_s) * x0 + math.sqrt(max(1.0 - abar_s - sigma**2, 0.0)) * eps
    return out if noise is None or sigma == 0.0 else out + sigma * noise


def _lambda(abar: float) -> float:
    """Half log-SNR, log(alpha / sigma)."""
    return 0.5 * math.log(abar / (1.0 - abar))


def dpmpp_2m_step(x_t: Array, x0: Array, prev_x0: Array | None, abar_prev_t: float | None,
                  abar_t: float, abar_s: float) -> Array:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, from t to s.

    prev_x0 / abar_prev_t: the x0 estimate and abar of the previous step (None on the first step,
    which is then first order). The final step to abar_s = 1 is first order and returns x0.
    """
    if abar_s >= 1.0:
        return x0
    alpha_s, sigma_s, sigma_t = math.sqrt(abar_s), math.sqrt(1.0 - abar_s), math.sqrt(1.0 - abar_t)
    h = _lambda(abar_s) - _lambda(abar_t)
    d = x0
    if prev_x0 is not None and abar_prev_t is not None:
        r = (_lambda(abar_t) - _lambda(abar_prev_t)) / h
        d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev_x0
    return (sigma_s / sigma_t) * x_t - alpha_s * math.expm1(-h) * d


# -- the loop -----------------------------------------------------------------------------------
def sampler_timesteps(steps: int, timesteps: int = TIMESTEPS) -> list[int]:
    """`steps` descending integer timesteps from T-1 down to 0, evenly spaced ("trailing" spacing:
    the first step always starts from pure noise at T-1)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    grid = np.round(np.linspace(timesteps - 1, 0, steps)).astype(np.int64)
    return [int(t) for t in grid] if steps > 1 else [timesteps - 1]


def logsnr_timesteps(steps: int, schedule: Schedule) -> list[int]:
    """Descending timesteps whose half log-SNR lambda is evenly spaced from t = T-1 to t = 0, the
    spacing DPM-Solver recommends (Lu et al. 2022, sec. 3.3): on a Gaussian test its 20-step error
    is 3-15x smaller than with even spacing in t. Duplicates (where lambda is steep) are merged."""
    T = schedule.timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    abar = schedule.alphas_cumprod
    lam = 0.5 * np.log(abar / (1.0 - abar))  # increasing as t decreases
    targets = np.linspace(lam[-1], lam[0], steps)
    ts = np.searchsorted(-lam, -targets).clip(0, T - 1)  # -lam increases with t
    return sorted({int(t) for t in ts} | {T - 1}, reverse=True)


def timesteps_for(sampler: str, steps: int, schedule: Schedule) -> list[int]:
    """The timesteps a sampler walks: log-SNR spacing for DPM-Solver++, even spacing otherwise."""
    if sampler == "dpmpp2m":
        return logsnr_timesteps(steps, schedule)
    return sampler_timesteps(steps, schedule.timesteps)


def partial_timesteps(ts: list[int], strength: float) -> list[int]:
    """The last max(1, int(len(ts) * strength)) timesteps of a sampler's walk, strength in (0, 1]: where
    a walk that starts from a real image noised to their first timestep goes (SDEdit, Meng et al.
    2022; the steps diffusers' img2img pipelines keep)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return ts[len(ts) - max(1, int(len(ts) * strength)):]


def sample(model_fn: ModelFn, x_T: Array, schedule: Schedule, sampler: str = "ddim", steps: int | None = None,
           *, eta: float = 0.0, prediction: str = "eps", noise_fn: NoiseFn | None = None,
           clip_x0: float | None = None, callback: Callable[[int, int], None] | None = None,
           init: Array | None = None, strength: float = 1.0) -> Array:
    """Denoise x_T (standard normal, any array type) to x0.

    model_fn(x, t) -> the model output ('eps' or 'v' per `prediction`) for the whole batch at integer
    timestep t (guidance, if any, happens inside model_fn; see `guided`). noise_fn(x) -> fresh standard
    normal noise shaped like x (needed by 'ddpm' and by 'ddim' with eta > 0); seeding it makes sampling
    deterministic. callback(i, n) is called after each step (progress bars). With `init` (clean data
    shaped like x_T) and strength < 1 the walk keeps its last steps (partial_timesteps) and starts from
    q_sample(init, x_T, ...) at the first of them: the layout of init survives, its details are drawn
    anew; strength 1 ignores init (pure noise, as without it).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
    if strength < 1.0 and init is None:
        raise ValueError(f"strength {strength} needs an init to start from")
    steps = DEFAULT_STEPS[sampler] if steps is None else steps
    ts = partial_timesteps(timesteps_for(sampler, steps, schedule), strength)
    stochastic = sampler == "ddpm" or (sampler == "ddim" and eta > 0)
    if stochastic and noise_fn is None:
        raise ValueError(f"sampler {sampler!r} with eta={eta} needs a noise_fn")
    x, prev_x0, abar_prev = x_T, None, None
    if strength < 1.0:
        a, s = schedule.coefficients(ts[0])
        x = q_sample(init, x_T, float(a), float(s))
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        abar_t, abar_s = schedule.abar(t), schedule.abar(s)
        x0, eps = split_prediction(model_fn(x, t), x, math.sqrt(abar_t), math.sqrt(1 - abar_t), prediction)
        if clip_x0 is not None:
            x0 = x0.clip(-clip_x0, clip_x0)
            eps = (x - math.sqrt(abar_t) * x0) * (1.0 / math.sqrt(1 - abar_t))  # keep eps consistent
        noise = noise_fn(x) if stochastic and s >= 0 else None
        if sampler == "ddpm":
            x = ddpm_step(x, x0, abar_t, abar_s, noise)
        elif sampler == "ddim":
            x = ddim_step(x0, eps, abar_t, abar_s, eta, noise)
        else:
            x = dpmpp_2m_step(x, x0, prev_x0, abar_prev, abar_t, abar_s)
        prev_x0, abar_prev = x0, abar_t
        if callback is not None:
            callback(i + 1, len(ts))
    return x
