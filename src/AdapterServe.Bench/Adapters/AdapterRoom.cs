using AdapterServe.Engine;
using AdapterServe.Modeling;

namespace AdapterServe.Bench.Adapters;

/// <param name="DeviceSlots">Adapters resident on the device at once (the residency cache's capacity).</param>
/// <param name="StoreDirectory">Where the adapter store may keep its own files for this run.</param>
public sealed record AdapterRoomOptions(string ModelDirectory, ModelConfig Model, string Dtype, string Device, int DeviceSlots, string StoreDirectory);

/// <summary>The Adapters room as the benchmark drives it: named adapter directories registered, and the binder the engine is started with.</summary>
public interface IAdapterRoom : IAsyncDisposable
{
    IAdapterBinder Binder { get; }
    /// <summary>Registers (and validates, as the server would) the PEFT directory under <paramref name="name"/>.</summary>
    void Register(string name, string directory);
}

/// <summary>
/// Opens the Adapters room for the <c>adapters</c>, <c>load</c> and <c>soak</c> scenarios. Needs an
/// <see cref="IAdapterBinder"/> implementation over the adapter registry and residency cache, which this build
/// does not have yet: until then <see cref="IsAvailable"/> is false and <see cref="Open"/> says so.
/// </summary>
public static class AdapterRoom
{
    public const string MissingBinder =
        "not available yet: needs the adapter binder (an IAdapterBinder implementation over AdapterRegistry and AdapterResidencyCache on branch engine)";

    public static bool IsAvailable => false;

    /// <exception cref="ScenarioUnavailableException">No adapter binder in this build.</exception>
    public static IAdapterRoom Open(AdapterRoomOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        throw new ScenarioUnavailableException(MissingBinder);
    }
}
