using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Adapters.Kinds.Omoe;
using AdapterServe.Adapters.Kinds.Smore;

namespace AdapterServe.Adapters;

/// <summary>
/// The kinds this server serves, looked up by <c>peft_type</c>. <see cref="BuiltIn"/> is THE registration list: a new
/// kind in <c>Kinds/&lt;Kind&gt;/</c> adds one line there. Kinds defined elsewhere (a plug-in, a test) join with
/// <see cref="With"/> (the server: <c>services.AddAdapterKind&lt;T&gt;()</c>). Immutable.
/// </summary>
public sealed class AdapterKinds
{
    private readonly Dictionary<string, IAdapterKindHandler> _byPeftType;

    /// <summary>The kinds of this build, one line per kind.</summary>
    public static AdapterKinds BuiltIn { get; } = new(
    [
        LoraKind.Instance,          // LORA: LoRA, rsLoRA, DoRA, KaSA
        KroneckerKind.Instance,     // LOKR, MOKA: Kronecker products, never materialised
        LoraMixerKind.Instance,     // LORA_MIXER: routed top-K mixture of LoRA experts
        OmoeKind.Instance,          // OMOE: orthogonal mixture of LoRA experts
        SmoreKind.Instance,         // HIER_MOE (moe_arch smore): S'MoRE
    ]);

    public AdapterKinds(IEnumerable<IAdapterKindHandler> handlers)
    {
        ArgumentNullException.ThrowIfNull(handlers);
        Handlers = [.. handlers];
        _byPeftType = new Dictionary<string, IAdapterKindHandler>(StringComparer.OrdinalIgnoreCase);
        foreach (var handler in Handlers)
            foreach (var peftType in handler.PeftTypes)
                if (!_byPeftType.TryAdd(peftType, handler))
                    throw new ArgumentException($"peft_type '{peftType}' is served by two kinds ({_byPeftType[peftType].GetType().Name} and {handler.GetType().Name})", nameof(handlers));
    }

    public IReadOnlyList<IAdapterKindHandler> Handlers { get; }

    /// <summary>Every <c>peft_type</c> served, for messages.</summary>
    public IEnumerable<string> PeftTypes => Handlers.SelectMany(h => h.PeftTypes);

    /// <summary>These kinds and <paramref name="handlers"/>.</summary>
    public AdapterKinds With(params IEnumerable<IAdapterKindHandler> handlers) => new(Handlers.Concat(handlers));

    public bool TryFind(string peftType, out IAdapterKindHandler handler) => _byPeftType.TryGetValue(peftType, out handler!);

    /// <summary>Does some kind place a file at this relative path (segments)? Before the kind is known (an upload), this decides what is received.</summary>
    public bool Places(IReadOnlyList<string> segments) => Handlers.Any(h => h.Files.Places(segments));

    /// <summary>The files of every kind present in <paramref name="directory"/> (see <see cref="AdapterFiles.Find"/>).</summary>
    public IReadOnlyList<string> Find(string directory) =>
        [.. Handlers.SelectMany(h => h.Files.Find(directory)).Distinct().Order(StringComparer.Ordinal)];

    /// <summary>Every file pattern of every kind (only those at the adapter folder's top when <paramref name="topOnly"/>), for messages.</summary>
    public string DescribeFiles(bool topOnly = false) => string.Join(", ",
        Handlers.SelectMany(h => h.Files.Patterns).Select(p => p.Pattern).Where(p => !topOnly || !p.Contains('/')).Distinct());
}
