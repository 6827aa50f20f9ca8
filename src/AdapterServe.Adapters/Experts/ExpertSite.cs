using AdapterServe.Modeling;

namespace AdapterServe.Adapters.Experts;

/// <summary>
/// Where routing happens: one adapted projection of one layer of one mixture adapter, with the labels of its experts
/// in the order the router numbers them (the expert adapter's name for a LoRA-Mixer, the index for OMoE,
/// <c>l&lt;level&gt;.&lt;index&gt;</c> for S'MoRE). Build it once at load and reuse it every step.
/// </summary>
public sealed record ExpertSite
{
    public ExpertSite(string adapter, int layer, Projection projection, IReadOnlyList<string> experts)
    {
        ArgumentException.ThrowIfNullOrEmpty(adapter);
        ArgumentNullException.ThrowIfNull(experts);
        if (experts.Count == 0) throw new ArgumentException("a routed site needs at least one expert", nameof(experts));
        if (experts.Distinct(StringComparer.Ordinal).Count() != experts.Count)
            throw new ArgumentException($"expert labels must be distinct (got {string.Join(", ", experts)})", nameof(experts));
        Adapter = adapter;
        Layer = layer;
        Projection = projection;
        Experts = experts.ToArray();
    }

    public string Adapter { get; }
    public int Layer { get; }
    public Projection Projection { get; }
    public string Module => Projection.ShortName();
    public IReadOnlyList<string> Experts { get; }

    /// <summary>Labels <c>"0"</c> … <c>"n-1"</c> (OMoE's experts have no names).</summary>
    public static IReadOnlyList<string> Indexed(int count) => Enumerable.Range(0, count).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray();
}
