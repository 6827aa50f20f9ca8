using System.Diagnostics;
using Prometheus;

namespace AdapterServe.Engine;

/// <summary>
/// Where the engine thread's time goes, phase by phase of the step loop, as the counter
/// <c>adapterserve_engine_step_phase_seconds_total{phase}</c>: a decode step's time outside the model's forward is the
/// sum of the other phases. Read by the bench's <c>decode</c> scenario (differences of <see cref="Totals"/>).
/// </summary>
public static class EngineStepPhases
{
    /// <summary>Every phase, in loop order.</summary>
    public static IReadOnlyList<string> All { get; } = ["schedule", "hook", "forward", "adapters_complete", "logits", "sample", "release"];

    // Created with the class, so every phase is exported from the first step on.
    internal static readonly Counter.Child Schedule = Phase("schedule");
    internal static readonly Counter.Child Hook = Phase("hook");
    internal static readonly Counter.Child Forward = Phase("forward");
    internal static readonly Counter.Child AdaptersComplete = Phase("adapters_complete");
    internal static readonly Counter.Child Logits = Phase("logits");
    internal static readonly Counter.Child Sample = Phase("sample");
    internal static readonly Counter.Child Release = Phase("release");

    /// <summary>Steps run (<c>adapterserve_step_seconds</c>' count) and the seconds spent in each phase since the process started.</summary>
    public static (long Steps, IReadOnlyDictionary<string, double> Seconds) Totals() =>
        (EngineMetrics.StepSeconds.Count, All.ToDictionary(p => p, p => Phase(p).Value));

    /// <summary>Adds the time since <paramref name="since"/> (a <see cref="Stopwatch"/> timestamp) to <paramref name="phase"/>; returns now.</summary>
    internal static long Add(Counter.Child phase, long since)
    {
        long now = Stopwatch.GetTimestamp();
        phase.Inc(Stopwatch.GetElapsedTime(since, now).TotalSeconds);
        return now;
    }

    private static Counter.Child Phase(string name) => EngineMetrics.StepPhaseSeconds.WithLabels(name);
}
