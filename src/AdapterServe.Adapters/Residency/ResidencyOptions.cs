namespace AdapterServe.Adapters;

/// <summary>Bounds of the two residency tiers. Both bounds of a tier hold at once (count AND bytes).</summary>
public sealed record ResidencyOptions
{
    /// <summary>Adapter versions resident on the compute device at once.</summary>
    public int MaxDeviceAdapters { get; init; } = 32;
    /// <summary>Bytes of adapter tensors on the compute device.</summary>
    public long MaxDeviceBytes { get; init; } = 4L << 30;
    /// <summary>Adapter versions kept as CPU tensors in front of the disk.</summary>
    public int MaxHostAdapters { get; init; } = 128;
    /// <summary>Bytes of adapter tensors kept on the host.</summary>
    public long MaxHostBytes { get; init; } = 16L << 30;

    public void Validate()
    {
        if (MaxDeviceAdapters < 1) throw new ArgumentOutOfRangeException(nameof(MaxDeviceAdapters), MaxDeviceAdapters, "must be at least 1");
        if (MaxDeviceBytes < 1) throw new ArgumentOutOfRangeException(nameof(MaxDeviceBytes), MaxDeviceBytes, "must be positive");
        if (MaxHostAdapters < 1) throw new ArgumentOutOfRangeException(nameof(MaxHostAdapters), MaxHostAdapters, "must be at least 1");
        if (MaxHostBytes < 1) throw new ArgumentOutOfRangeException(nameof(MaxHostBytes), MaxHostBytes, "must be positive");
    }
}

/// <summary>What the two tiers hold right now.</summary>
public sealed record ResidencySnapshot(int DeviceAdapters, long DeviceBytes, int HostAdapters, long HostBytes, int TrackedVersions);
