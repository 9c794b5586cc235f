"""shared.diffusion: schedules against closed forms, q_sample statistics, parameterizations, and the
samplers (DDIM eta=1 vs the DDPM posterior, exactness on known data distributions, determinism)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import diffusion
from shared.diffusion import Schedule


def test_linear_schedule_closed_form():
    s = Schedule.make("linear")
    assert s.timesteps == 1000
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(s.betas), (0.02 - 1e-4) / 999, rtol=1e-9)
    t = np.array([0, 1, 499, 999])
    # abar_t = prod (1 - beta_i): compare with the log-sum in closed form of the arithmetic betas
    expected = [np.exp(np.sum(np.log1p(-np.linspace(1e-4, 0.02, 1000)[: k + 1]))) for k in t]
    np.testing.assert_allclose(s.alphas_cumprod[t], expected, rtol=1e-10)
    assert s.alphas_cumprod[-1] == pytest.approx(4.04e-5, rel=0.01)  # DDPM's known terminal value


def test_cosine_schedule_closed_form():
    s = Schedule.make("cosine")
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 250, 500, 900):
        assert s.alphas_cumprod[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max() <= 0.999 and np.all(np.diff(s.alphas_cumprod) < 0)


def test_unknown_schedule_and_bad_steps():
    with pytest.raises(ValueError):
        Schedule.make("quadratic")
    with pytest.raises(ValueError):
        diffusion.sampler_timesteps(0)


def test_q_sample_statistics():
    s = Schedule.make("cosine")
    rng = np.random.default_rng(0)
    x0 = np.full(200_000, 0.7)
    for t in (0, 300, 999):
        a, sd = s.coefficients(t)
        x_t = diffusion.q_sample(x0, rng.standard_normal(x0.shape), a, sd)
        assert x_t.mean() == pytest.approx(a * 0.7, abs=4 * sd / math.sqrt(x0.size) + 1e-6)
        assert x_t.var() == pytest.approx(1 - s.alphas_cumprod[t], rel=0.02, abs=1e-7)


@settings(max_examples=30, deadline=None)
@given(t=st.integers(0, 999), kind=st.sampled_from(diffusion.PREDICTIONS), seed=st.integers(0, 2**16))
def test_parameterizations_round_trip(t, kind, seed):
    s = Schedule.make("linear")
    rng = np.random.default_rng(seed)
    x0, noise = rng.standard_normal(16), rng.standard_normal(16)
    a, sd = (float(c) for c in s.coefficients(t))
    x_t = diffusion.q_sample(x0, noise, a, sd)
    pred = diffusion.target_for(x0, noise, a, sd, kind)
    x0_hat, eps_hat = diffusion.split_prediction(pred, x_t, a, sd, kind)
    np.testing.assert_allclose(eps_hat, noise, atol=1e-9)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-6 / max(a, 1e-3))


def test_guidance_combination():
    cond, uncond = np.array([2.0]), np.array([1.0])
    assert diffusion.guided(cond, uncond, 1.0)[0] == 2.0 and diffusion.guided(cond, uncond, 0.0)[0] == 1.0
    assert diffusion.guided(cond, uncond, 3.0)[0] == 4.0


@pytest.mark.parametrize("t,s", [(999, 979), (500, 499), (20, 0), (1, 0)])
def test_ddim_eta_one_is_the_ddpm_posterior(t, s):
    sch = Schedule.make("linear")
    abar_t, abar_s = sch.abar(t), sch.abar(s)
    c_x0, c_xt, var = diffusion.ddpm_posterior(abar_t, abar_s)
    assert diffusion.ddim_sigma(abar_t, abar_s, 1.0) ** 2 == pytest.approx(var, rel=1e-12)
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal(8), rng.standard_normal(8)
    x_t = diffusion.q_sample(x0, eps, math.sqrt(abar_t), math.sqrt(1 - abar_t))
    mean_ddim = diffusion.ddim_step(x0, eps, abar_t, abar_s, 1.0, None)
    np.testing.assert_allclose(mean_ddim, c_x0 * x0 + c_xt * x_t, rtol=1e-9, atol=1e-12)
    z = rng.standard_normal(8)
    np.testing.assert_allclose(diffusion.ddim_step(x0, eps, abar_t, abar_s, 1.0, z),
                               diffusion.ddpm_step(x_t, x0, abar_t, abar_s, z), rtol=1e-9, atol=1e-12)


def gaussian_oracle(sch: Schedule, sigma: float, kind: str = "eps"):
    """The exact denoiser for data ~ N(0, sigma^2): E[eps | x_t] = s x_t / (a^2 sigma^2 + s^2)."""
    def model_fn(x, t):
        a, s = (float(c) for c in sch.coefficients(t))
        eps = s * x / (a * a * sigma * sigma + s * s)
        x0 = (x - s * eps) / a
        return eps if kind == "eps" else a * eps - s * x0
    return model_fn


@pytest.mark.parametrize("schedule", diffusion.SCHEDULES)
@pytest.mark.parametrize("kind", diffusion.PREDICTIONS)
def test_ddpm_reproduces_a_gaussian_data_distribution(schedule, kind):
    sch = Schedule.make(schedule)
    rng = np.random.default_rng(0)
    out = diffusion.sample(gaussian_oracle(sch, 0.5, kind), rng.standard_normal(40_000), sch, "ddpm",
                           prediction=kind, noise_fn=lambda x: rng.standard_normal(x.shape))
    assert out.std() == pytest.approx(0.5, rel=0.03) and abs(out.mean()) < 0.02


@pytest.mark.parametrize("schedule", diffusion.SCHEDULES)
@pytest.mark.parametrize("kind", diffusion.PREDICTIONS)
def test_ode_samplers_follow_the_exact_flow(schedule, kind):
    """For N(0, sigma^2) data the probability-flow ODE maps x_T to sigma x_T / sqrt(a^2 sigma^2 + s^2)."""
    sch = Schedule.make(schedule)
    x_T = np.random.default_rng(0).standard_normal(1000)
    a, s = (float(c) for c in sch.coefficients(999))
    exact = 0.5 * x_T / math.sqrt(a * a * 0.25 + s * s)

    def error(sampler, steps):
        out = diffusion.sample(gaussian_oracle(sch, 0.5, kind), x_T, sch, sampler, steps, prediction=kind)
        return np.abs(out - exact).max() / np.abs(exact).max()

    assert error("ddim", 50) < 0.06 and error("ddim", 200) < 0.02
    assert error("dpmpp2m", 20) < 0.04 and error("dpmpp2m", 20) < error("ddim", 20)


def test_deterministic_samplers_hit_a_point_mass_exactly():
    sch = Schedule.make("linear")
    target = np.linspace(-1, 1, 10)

    def model_fn(x, t):
        a, s = (float(c) for c in sch.coefficients(t))
        return (x - a * target) / s

    x_T = np.random.default_rng(3).standard_normal(10)
    for sampler, steps in (("ddim", 50), ("dpmpp2m", 10), ("ddim", 1)):
        np.testing.assert_allclose(diffusion.sample(model_fn, x_T, sch, sampler, steps), target, atol=1e-9)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.5), ("dpmpp2m", 0.0)])
def test_sampler_determinism_per_seed(sampler, eta):
    sch = Schedule.make("linear")
    fn = gaussian_oracle(sch, 0.3)

    def run(seed):
        rng = np.random.default_rng(seed)
        return diffusion.sample(fn, rng.standard_normal(64), sch, sampler, 30, eta=eta,
                                noise_fn=lambda x: rng.standard_normal(x.shape))

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.allclose(run(7), run(8))


def test_logsnr_spacing_for_dpm_solver():
    for kind in diffusion.SCHEDULES:
        sch = Schedule.make(kind)
        ts = diffusion.logsnr_timesteps(20, sch)
        assert ts[0] == 999 and ts[-1] == 0 and bool(np.all(np.diff(ts) < 0))
        lam = [0.5 * math.log(sch.abar(t) / (1 - sch.abar(t))) for t in ts]
        gaps = np.diff(lam)[1:-1]  # the ends are set by the integer grid (t = 999, t = 0)
        assert gaps.max() < 3 * np.median(gaps)  # roughly even in log-SNR


def test_timesteps_descend_from_pure_noise():
    ts = diffusion.sampler_timesteps(50)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 50 and bool(np.all(np.diff(ts) < 0))
    assert diffusion.sampler_timesteps(1000) == list(range(999, -1, -1))


def test_partial_timesteps_keep_the_last_steps_of_a_walk():
    ts = diffusion.sampler_timesteps(10)
    assert ts == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert diffusion.partial_timesteps(ts, 0.5) == [444, 333, 222, 111, 0]
    assert diffusion.partial_timesteps(ts, 0.35) == [222, 111, 0]  # int(3.5) steps
    assert diffusion.partial_timesteps(ts, 0.01) == [0] and diffusion.partial_timesteps(ts, 1.0) == ts
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            diffusion.partial_timesteps(ts, bad)


def test_a_partial_walk_starts_from_the_noised_init():
    """A model that predicts eps = 0 makes DDIM carry x_t0 / a_t0 to the end: the output is
    init + sqrt((1 - abar) / abar) * noise at the walk's first kept timestep (444 at strength 0.5 of
    10 steps), by hand; strength 1 ignores init; below 1 without init is refused."""
    sch = Schedule.make("linear")
    rng = np.random.default_rng(0)
    init, noise = rng.standard_normal(8), rng.standard_normal(8)

    def no_eps(x, t):
        return 0.0 * x

    out = diffusion.sample(no_eps, noise, sch, "ddim", 10, init=init, strength=0.5)
    abar = sch.abar(444)
    np.testing.assert_allclose(out, init + math.sqrt((1 - abar) / abar) * noise, rtol=1e-12)
    np.testing.assert_array_equal(diffusion.sample(no_eps, noise, sch, "ddim", 10, init=init),
                                  diffusion.sample(no_eps, noise, sch, "ddim", 10))
    with pytest.raises(ValueError, match="needs an init"):
        diffusion.sample(no_eps, noise, sch, "ddim", 10, strength=0.5)


def test_stochastic_sampler_needs_noise():
    with pytest.raises(ValueError):
        diffusion.sample(lambda x, t: x, np.zeros(3), Schedule.make(), "ddpm", 10)


def test_shared_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, shared.diffusion; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_guidance_rescale_matches_the_conditional_std_and_blends():
    rng = np.random.default_rng(0)
    cond = rng.standard_normal((2, 3, 4, 4))
    uncond = 0.5 * rng.standard_normal((2, 3, 4, 4))
    plain = diffusion.guided(cond, uncond, 7.0)
    full = diffusion.guided(cond, uncond, 7.0, rescale=1.0)
    for i in range(2):  # per sample: the guided output scaled to the conditional output's std
        np.testing.assert_allclose(full[i], plain[i] * cond[i].std() / plain[i].std(), rtol=1e-9)
    np.testing.assert_allclose(diffusion.guided(cond, uncond, 7.0, rescale=0.7), 0.7 * full + 0.3 * plain,
                               rtol=1e-9)
    np.testing.assert_array_equal(diffusion.guided(cond, uncond, 7.0, rescale=0.0), plain)
    # hand-computed: cond [1, 3] (std 1), uncond [0, 0], scale 4 -> [4, 12] (std 4) -> [1, 3]
    np.testing.assert_allclose(diffusion.guided(np.array([[1.0, 3.0]]), np.zeros((1, 2)), 4.0, 1.0),
                               [[1.0, 3.0]], rtol=1e-9)


def test_guidance_rescale_is_the_same_formula_for_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    cond, uncond = rng.standard_normal((3, 4, 8, 8)), rng.standard_normal((3, 4, 8, 8))
    want = diffusion.guided(cond, uncond, 5.0, 0.7)
    got = diffusion.guided(torch.from_numpy(cond), torch.from_numpy(uncond), 5.0, 0.7)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_config_round_trip_and_old_checkpoint_keys(kind):
    import json

    s = Schedule.make(kind)
    config = s.to_config()
    np.testing.assert_array_equal(Schedule.from_config(config).betas, s.betas)
    as_metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}  # ONNX props
    np.testing.assert_array_equal(Schedule.from_config(as_metadata).betas, s.betas)
    old = {"schedule": kind, "timesteps": 1000, "prediction": "eps"}  # generator.pt before to_config
    np.testing.assert_array_equal(Schedule.from_config(old).betas, s.betas)
    with pytest.raises(ValueError, match="no parameter"):
        Schedule.make(kind, beta=1.0)


def test_schedule_parameters_change_the_betas():
    s = Schedule.make("linear", beta_end=0.01)
    assert s.betas[-1] == pytest.approx(0.01) and Schedule.from_config(s.to_config()).betas[-1] == s.betas[-1]


def test_min_snr_loss_weights_against_hand_computed_values():
    torch = pytest.importorskip("torch")
    # SNR = a^2 / s^2: 0.8 / 0.2 = 4 (below gamma 5) and 0.99 / 0.01 = 99 (above it)
    a, s = np.sqrt([0.8, 0.99]), np.sqrt([0.2, 0.01])
    np.testing.assert_allclose(diffusion.loss_weight(a, s, "eps", 5.0), [1.0, 5 / 99], rtol=1e-12)
    np.testing.assert_allclose(diffusion.loss_weight(a, s, "v", 5.0), [4 / 5, 5 / 100], rtol=1e-12)
    got = diffusion.loss_weight(torch.from_numpy(a), torch.from_numpy(s), "eps", 5.0)
    np.testing.assert_allclose(got.numpy(), [1.0, 5 / 99], rtol=1e-12)
    assert diffusion.loss_weight(a, s, "eps", None) == 1.0  # uniform: the plain MSE
    with pytest.raises(ValueError, match="unknown prediction"):
        diffusion.loss_weight(a, s, "x0", 5.0)
