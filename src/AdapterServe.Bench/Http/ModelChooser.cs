using System.Globalization;

namespace AdapterServe.Bench.Http;

/// <summary>
/// Which model (base or adapter) each request names: <c>uniform</c>, or <c>zipf:s</c> where the k-th model of the
/// list (1-based) is chosen with probability proportional to 1/k^s (S-LoRA's skewed workloads).
/// </summary>
public sealed class ModelChooser
{
    private readonly double[] _cumulative;
    private readonly Random _random;
    private readonly Lock _gate = new();

    public IReadOnlyList<string> Models { get; }
    public IReadOnlyList<double> Probabilities { get; }

    private ModelChooser(IReadOnlyList<string> models, double[] weights, int seed)
    {
        Models = models;
        double total = weights.Sum();
        Probabilities = weights.Select(w => w / total).ToArray();
        _cumulative = new double[weights.Length];
        double sum = 0;
        for (int i = 0; i < weights.Length; i++) _cumulative[i] = sum += Probabilities[i];
        _random = new Random(seed);
    }

    public static ModelChooser Parse(string distribution, IReadOnlyList<string> models, int seed)
    {
        if (models.Count == 0) throw new UsageException("no model to send requests to");
        if (distribution == "uniform") return new ModelChooser(models, models.Select(_ => 1.0).ToArray(), seed);
        if (distribution.StartsWith("zipf:", StringComparison.Ordinal)
            && double.TryParse(distribution[5..], NumberStyles.Float, CultureInfo.InvariantCulture, out double s) && s >= 0 && double.IsFinite(s))
            return new ModelChooser(models, Enumerable.Range(1, models.Count).Select(k => Math.Pow(k, -s)).ToArray(), seed);
        throw new UsageException($"--distribution '{distribution}' is not 'uniform' or 'zipf:<s>' with s >= 0 (e.g. zipf:1.1)");
    }

    public string Next()
    {
        double u;
        lock (_gate) u = _random.NextDouble();
        int i = Array.BinarySearch(_cumulative, u);
        if (i < 0) i = ~i;
        return Models[Math.Min(i, Models.Count - 1)];
    }
}
