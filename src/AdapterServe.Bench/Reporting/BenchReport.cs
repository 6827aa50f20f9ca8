using System.Text.Json.Nodes;

namespace AdapterServe.Bench.Reporting;

/// <summary>A goal from issue 5: the value must be at least <see cref="AtLeast"/> and/or at most <see cref="AtMost"/>.</summary>
public sealed record Target(double? AtLeast = null, double? AtMost = null)
{
    public bool IsMetBy(double value) => (AtLeast is not double lo || value >= lo) && (AtMost is not double hi || value <= hi);

    public override string ToString() => (AtLeast, AtMost) switch
    {
        (double lo, double hi) => $"{lo:0.##}..{hi:0.##}",
        (double lo, null) => $">= {lo:0.##}",
        (null, double hi) => $"<= {hi:0.##}",
        _ => "",
    };
}

/// <summary>One measured quantity: the median over the repeated runs, and every run.</summary>
public sealed record Figure(string Name, string Unit, double Median, IReadOnlyList<double> Runs, Target? Target = null)
{
    public bool? Met => Target?.IsMetBy(Median);

    public static Figure Of(string name, string unit, IReadOnlyList<double> runs, Target? target = null) =>
        new(name, unit, Stats.Median(runs), runs, target);
}

/// <summary>A ratio of two figures of the same run (adapter/base, N adapters/1 adapter, batch 16/batch 1).</summary>
public sealed record Ratio(string Name, string Numerator, string Denominator, double Value, Target? Target = null)
{
    public bool? Met => Target?.IsMetBy(Value);

    public static Ratio Between(string name, Figure numerator, Figure denominator, Target? target = null) =>
        new(name, numerator.Name, denominator.Name, numerator.Median / denominator.Median, target);

    /// <summary>
    /// Figures measured in rounds (run i of each in round i, back to back): the median over rounds of
    /// numerator run i / denominator run i, so a slow spell of a shared machine weighs on both sides of each quotient alike.
    /// </summary>
    public static Ratio OfRounds(string name, Figure numerator, Figure denominator, Target? target = null)
    {
        if (numerator.Runs.Count != denominator.Runs.Count || numerator.Runs.Count == 0)
            throw new ArgumentException($"{numerator.Name} has {numerator.Runs.Count} runs and {denominator.Name} {denominator.Runs.Count}: a ratio of rounds needs the same number, at least one");
        var quotients = numerator.Runs.Zip(denominator.Runs, (n, d) => n / d).ToList();
        return new(name, numerator.Name, denominator.Name, Stats.Median(quotients), target);
    }
}

/// <summary>Resident memory of the benchmark process at one moment (after a full garbage collection).</summary>
/// <param name="TorchLiveTensors">TorchSharp tensors alive in the whole process (<c>torch.Tensor.TotalCount</c>); null where TorchSharp is not loaded.</param>
public sealed record MemorySample(string Label, double AtSeconds, long WorkingSetBytes, long PrivateBytes, long ManagedHeapBytes, long? TorchLiveTensors, long? TorchPeakTensors);

/// <summary>The machine the figures were taken on.</summary>
/// <param name="Dtype">Compute dtype of the engine; null for <c>serve</c> (the server under test decides).</param>
/// <param name="LoadAverage">/proc/loadavg at the start: other work on the machine skews every figure.</param>
/// <param name="Environment">Variables that change native threading or the .NET runtime (OMP_*, MKL_*, DOTNET_*), as set.</param>
public sealed record MachineInfo(int Cores, string Os, string Cpu, string Runtime, string? TorchSharpVersion, string? Dtype, string? Device, int? TorchThreads,
    string? LoadAverage, IReadOnlyDictionary<string, string> Environment);

/// <summary>The synthetic model an engine scenario ran on.</summary>
public sealed record ModelSummary(string Name, string Directory, int HiddenSize, int Layers, int Heads, int KeyValueHeads, int IntermediateSize, int VocabSize, bool TiedEmbeddings, long Parameters, int ContextLength, double LoadSeconds);

/// <summary>Everything one benchmark run produced; written as the human table and as JSON.</summary>
public sealed class BenchReport
{
    public required string Scenario { get; init; }
    public DateTimeOffset StartedAt { get; init; } = DateTimeOffset.UtcNow;
    public required MachineInfo Machine { get; init; }
    public ModelSummary? Model { get; set; }
    /// <summary>The effective options (after <c>--quick</c> and scenario defaults).</summary>
    public JsonObject Settings { get; init; } = [];
    public List<Figure> Figures { get; } = [];
    public List<Ratio> Ratios { get; } = [];
    public List<MemorySample> Memory { get; } = [];
    public List<string> Notes { get; } = [];
    /// <summary>Failures the run recorded without stopping (the program then exits with 1).</summary>
    public List<string> Errors { get; } = [];
    public double TotalSeconds { get; set; }

    public Figure Add(Figure figure)
    {
        if (Figures.Any(f => f.Name == figure.Name)) throw new InvalidOperationException($"figure '{figure.Name}' reported twice");
        Figures.Add(figure);
        return figure;
    }

    public Ratio Add(Ratio ratio)
    {
        Ratios.Add(ratio);
        return ratio;
    }

    public Figure Figure(string name) => Figures.FirstOrDefault(f => f.Name == name) ?? throw new KeyNotFoundException($"no figure '{name}' in this report");
}
