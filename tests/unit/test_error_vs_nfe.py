"""The error-vs-NFE core shared by the Compare Samplers node and the quality/convergence benchmarks."""
import torch

from diagnostics.error_vs_nfe import endpoint_errors, error_vs_nfe, per_sample_error


def test_per_sample_error_is_the_rms_over_each_samples_dimensions():
    reference = torch.zeros(3, 2, 2)
    samples = torch.stack([torch.full((2, 2), value) for value in (1.0, -2.0, 4.0)])
    assert torch.equal(per_sample_error(samples, reference), torch.tensor([1.0, 2.0, 4.0]))
    errors = endpoint_errors(samples, reference)
    assert errors["median_error"] == 2.0
    assert abs(errors["rms_error"] - ((1 + 4 + 16) / 3) ** 0.5) < 1e-6


def test_per_sample_error_counts_every_part_of_a_multi_part_latent():
    video, audio = torch.randn(2, 4, 3), torch.randn(2, 5, 1)
    nested = torch.nested.nested_tensor([video, audio])
    shifted = torch.nested.nested_tensor([video, audio + 1.0])  # an error in the audio part only
    assert torch.allclose(per_sample_error(shifted, nested), torch.full((2,), (5 / 17) ** 0.5))
    assert torch.equal(per_sample_error(nested, nested), torch.zeros(2))


def test_error_vs_nfe_runs_every_sampler_at_every_step_count_against_the_reference():
    reference = torch.ones(4, 3)
    calls = []

    def run(name, steps):  # a "sampler" whose error halves with every doubling of the steps
        calls.append((name, steps))
        scale = {"a": 1.0, "b": 3.0}[name]
        return reference + scale / steps, 2 * steps

    rows = error_vs_nfe(run, ["a", "b"], (2, 4), reference)
    assert calls == [("a", 2), ("a", 4), ("b", 2), ("b", 4)]
    assert [(row["sampler"], row["steps"], row["nfe"]) for row in rows] == [("a", 2, 4), ("a", 4, 8), ("b", 2, 4),
                                                                           ("b", 4, 8)]
    assert [round(row["rms_error"], 6) for row in rows] == [0.5, 0.25, 1.5, 0.75]
