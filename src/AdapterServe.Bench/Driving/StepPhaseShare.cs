using AdapterServe.Engine;

namespace AdapterServe.Bench.Driving;

/// <summary>The engine's step-phase time (<see cref="EngineStepPhases"/>) between two readings, per step.</summary>
public sealed record StepPhaseShare(long Steps, IReadOnlyDictionary<string, double> Seconds)
{
    public static StepPhaseShare Between((long Steps, IReadOnlyDictionary<string, double> Seconds) before, (long Steps, IReadOnlyDictionary<string, double> Seconds) after) =>
        new(after.Steps - before.Steps, after.Seconds.ToDictionary(p => p.Key, p => p.Value - before.Seconds.GetValueOrDefault(p.Key)));

    /// <summary>Milliseconds per step spent in <paramref name="phase"/>.</summary>
    public double MsPerStep(string phase) => Steps == 0 ? double.NaN : Seconds.GetValueOrDefault(phase) * 1000 / Steps;

    /// <summary>Milliseconds per step spent in every phase but <paramref name="phase"/>.</summary>
    public double MsPerStepOutside(string phase) => Steps == 0 ? double.NaN : Seconds.Where(p => p.Key != phase).Sum(p => p.Value) * 1000 / Steps;
}
