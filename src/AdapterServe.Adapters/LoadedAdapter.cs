using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters;

/// <summary>
/// One version of one adapter, loaded into tensors on one device in one dtype by its kind (<see cref="Modules"/> are
/// the kind's own layout). Kind-neutral: the residency cache and the step hook see only this. Owns its tensors: dispose it.
/// </summary>
public sealed class LoadedAdapter : IDisposable
{
    /// <summary>The PEFT weights file (<see cref="AdapterFiles.WeightsFileName"/>).</summary>
    public const string WeightsFileName = AdapterFiles.WeightsFileName;

    public LoadedAdapter(AdapterRecord record, Device device, ScalarType dtype, IAdapterModules modules)
    {
        Record = record ?? throw new ArgumentNullException(nameof(record));
        Device = device;
        DType = dtype;
        Modules = modules ?? throw new ArgumentNullException(nameof(modules));
    }

    public AdapterRecord Record { get; }
    public string Name => Record.Name;
    public int Version => Record.Version;
    public AdapterKind Kind => Record.Description.Kind;
    public IAdapterKindHandler Handler => Record.Description.Handler;
    public Device Device { get; }
    public ScalarType DType { get; }
    /// <summary>The kind's loaded tensors.</summary>
    public IAdapterModules Modules { get; }
    /// <summary>Bytes of all tensors this adapter holds, shared storage included (its footprint alone).</summary>
    public long Bytes => Modules.Bytes + Modules.Shared.Sum(s => s.Bytes);

    /// <summary>
    /// Bytes <paramref name="adapters"/> hold together: each one's own tensors, and each block of
    /// <see cref="IAdapterModules.Shared"/> storage once.
    /// </summary>
    public static long Footprint(IEnumerable<LoadedAdapter> adapters)
    {
        long own = 0;
        var shared = new HashSet<SharedStorage>(ReferenceEqualityComparer.Instance);
        foreach (var a in adapters)
        {
            own += a.Modules.Bytes;
            shared.UnionWith(a.Modules.Shared);
        }
        return own + shared.Sum(s => s.Bytes);
    }
    /// <summary>Null when it may be mixed with other adapters in one request; otherwise why not (see <see cref="AdapterDescription.NotMixable"/>).</summary>
    public string? NotMixable => Record.Description.NotMixable;
    public bool IsDisposed { get; private set; }
    /// <summary>
    /// Its device slot while it is in the residency cache's device tier (<see cref="AdapterSlotTable"/>), else null.
    /// Kinds that stack adapters per projection serve it from there.
    /// </summary>
    public AdapterSlot? Slot { get; internal set; }

    public override string ToString() => $"adapter '{Name}' v{Version}";

    /// <summary>
    /// Loads <paramref name="record"/> through its kind: computed against <paramref name="baseWeights"/>, stored in
    /// <paramref name="dtype"/> on <paramref name="device"/>. Errors are <see cref="AdapterValidationException"/>s
    /// naming the adapter and the file or tensor.
    /// </summary>
    public static LoadedAdapter Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype)
    {
        ArgumentNullException.ThrowIfNull(record);
        ArgumentNullException.ThrowIfNull(baseWeights);
        return new LoadedAdapter(record, device, dtype, record.Description.Handler.Load(record, baseWeights, device, dtype));
    }

    /// <summary>A copy of this adapter on <paramref name="device"/> (same dtype), e.g. host tier → device tier.</summary>
    public LoadedAdapter To(Device device)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return new LoadedAdapter(Record, device, DType, Modules.To(device));
    }

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        Modules.Dispose();
    }
}
