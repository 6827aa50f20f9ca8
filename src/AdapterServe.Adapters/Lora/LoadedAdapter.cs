using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters;

/// <summary>
/// One version of one adapter, loaded into tensors on one device in one dtype: a <see cref="LoraWeights"/> per
/// adapted (layer, projection). LoRA, rsLoRA, DoRA and KaSA all end up as <c>ΔW = B·A</c> per module (see
/// <see cref="LoraWeights"/> for the scaling convention), plus DoRA's magnitude. Owns its tensors: dispose it.
/// Built from an <see cref="AdapterRecord"/> whose <see cref="AdapterDescription"/> the validator produced.
/// </summary>
public sealed class LoadedAdapter : IDisposable
{
    public const string WeightsFileName = "adapter_model.safetensors";

    private readonly Dictionary<(int Layer, Projection Projection), LoraWeights> _modules;

    private LoadedAdapter(AdapterRecord record, Device device, ScalarType dtype, Dictionary<(int, Projection), LoraWeights> modules)
    {
        Record = record;
        Device = device;
        DType = dtype;
        _modules = modules;
        Bytes = modules.Values.Sum(m => m.Bytes);
        HasDora = modules.Values.Any(m => m.IsDora);
    }

    public AdapterRecord Record { get; }
    public string Name => Record.Name;
    public int Version => Record.Version;
    public AdapterKind Kind => Record.Description.Kind;
    public Device Device { get; }
    public ScalarType DType { get; }
    /// <summary>Bytes of all tensors this adapter holds.</summary>
    public long Bytes { get; }
    /// <summary>True when some module rescales rows by a DoRA magnitude (such an adapter cannot be mixed with others).</summary>
    public bool HasDora { get; }
    public bool IsDisposed { get; private set; }
    public IReadOnlyCollection<LoraWeights> Modules => _modules.Values;

    /// <summary>The weights for one projection of one layer, or null when the adapter does not target it.</summary>
    public LoraWeights? Module(int layer, Projection projection) => _modules.GetValueOrDefault((layer, projection));

    public override string ToString() => $"adapter '{Name}' v{Version}";

    /// <summary>
    /// Reads <c>adapter_model.safetensors</c> of <paramref name="record"/>'s directory and builds the served tensors:
    /// computed in float32 on the base weight's device (KaSA's SVD included), stored in <paramref name="dtype"/> on
    /// <paramref name="device"/>. Tensors are created outside any inference_mode guard. Errors are
    /// <see cref="AdapterValidationException"/>s naming the adapter and the tensor.
    /// </summary>
    /// <param name="baseWeight">The frozen base weight <c>W0 [d_out, d_in]</c> of (layer, projection); only read.</param>
    public static LoadedAdapter Load(AdapterRecord record, Func<int, Projection, Tensor> baseWeight, Device device, ScalarType dtype)
    {
        var path = Path.Combine(record.Directory, WeightsFileName);
        try
        {
            using var file = SafetensorsFile.Open(path);
            return FromTensors(record, key => file.Tensors.ContainsKey(key) ? file.Read(key, ScalarType.Float32, CPU) : null, baseWeight, device, dtype);
        }
        catch (SafetensorsFormatException e)
        {
            throw new AdapterValidationException($"{Describe(record)}: {e.Message}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new AdapterValidationException($"{Describe(record)}: cannot read {path}: {e.Message}", "adapter_unreadable", 500);
        }
    }

    /// <summary>
    /// Builds the served tensors from tensors already at hand (the same work as <see cref="Load"/> without the file).
    /// </summary>
    /// <param name="tensor">The adapter tensor stored under a full key (e.g. <c>{TensorPrefix}.lora_A.weight</c>), or null when
    /// absent. The tensors it returns are only read.</param>
    public static LoadedAdapter FromTensors(AdapterRecord record, Func<string, Tensor?> tensor, Func<int, Projection, Tensor> baseWeight, Device device, ScalarType dtype)
    {
        ArgumentNullException.ThrowIfNull(record);
        ArgumentNullException.ThrowIfNull(tensor);
        ArgumentNullException.ThrowIfNull(baseWeight);
        using var inferenceOff = inference_mode(false);
        var modules = new Dictionary<(int, Projection), LoraWeights>();
        try
        {
            foreach (var spec in record.Description.Modules)
            {
                if (modules.ContainsKey((spec.Layer, spec.Projection)))
                    throw new AdapterValidationException($"{Describe(record)}: {ProjectionNames.ModulePath(spec.Layer, spec.Projection)} is listed twice");
                modules.Add((spec.Layer, spec.Projection), LoadModule(record, spec, tensor, baseWeight(spec.Layer, spec.Projection), device, dtype));
            }
        }
        catch
        {
            foreach (var m in modules.Values) m.Dispose();
            throw;
        }
        return new LoadedAdapter(record, device, dtype, modules);
    }

    /// <summary>A copy of this adapter on <paramref name="device"/> (same dtype), e.g. host tier → device tier.</summary>
    public LoadedAdapter To(Device device)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        var copies = new Dictionary<(int, Projection), LoraWeights>();
        try
        {
            foreach (var (key, module) in _modules) copies.Add(key, module.To(device));
        }
        catch
        {
            foreach (var m in copies.Values) m.Dispose();
            throw;
        }
        return new LoadedAdapter(Record, device, DType, copies);
    }

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        foreach (var m in _modules.Values) m.Dispose();
    }

    private static string Describe(AdapterRecord record) => $"adapter '{record.Name}' v{record.Version}";

    private static LoraWeights LoadModule(AdapterRecord record, AdapterModuleSpec spec, Func<string, Tensor?> tensor, Tensor baseWeight, Device device, ScalarType dtype)
    {
        string module = ProjectionNames.ModulePath(spec.Layer, spec.Projection);
        if (baseWeight.dim() != 2)
            throw new InvalidOperationException($"base weight of {module} must be [d_out, d_in], got [{string.Join(", ", baseWeight.shape)}]");
        long dOut = baseWeight.shape[0], dIn = baseWeight.shape[1];
        int r = spec.Rank;
        if (r <= 0) throw new AdapterValidationException($"{Describe(record)}: {module} has rank {r}");
        if (spec.HasMagnitude && spec.HasDiag)
            throw new AdapterValidationException($"{Describe(record)}: {module} has both a DoRA magnitude and a KaSA diagonal; combining DoRA with KaSA is not supported");
        if (spec.HasMagnitude && spec.HasBias)
            throw new AdapterValidationException($"{Describe(record)}: {module} has both a DoRA magnitude and a lora_B bias; PEFT does not support lora_bias with DoRA", "unsupported_adapter");

        using var scope = NewDisposeScope();
        var dev = baseWeight.device;

        Tensor? ReadAny(string[] suffixes, long[] shape)
        {
            foreach (var suffix in suffixes)
            {
                string key = $"{spec.TensorPrefix}.{suffix}";
                if (tensor(key) is not { } t) continue;
                if (!t.shape.SequenceEqual(shape))
                    throw new AdapterValidationException(
                        $"{Describe(record)}: tensor '{key}' has shape [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}] for {module} (base weight [{dOut}, {dIn}], rank {r})");
                return t.to(ScalarType.Float32, dev);
            }
            return null;
        }
        Tensor Read(string suffix, params long[] shape) => ReadAny([suffix], shape)
            ?? throw new AdapterValidationException($"{Describe(record)}: {WeightsFileName} has no tensor '{spec.TensorPrefix}.{suffix}'");

        // PEFT stores lora_A [r, d_in] and lora_B [d_out, r] whatever fan_in_fan_out says: the flag only tells that the
        // BASE layer (GPT-2 Conv1D) stores its weight as [d_in, d_out]. Our base weights are always [d_out, d_in], so the
        // delta B·A is applied as is; a merge into a fan_in_fan_out base would transpose ΔW.
        var a = Read("lora_A.weight", r, dIn);                                           // [r, d_in]
        var b = Read("lora_B.weight", dOut, r);                                          // [d_out, r]
        var bias = spec.HasBias ? TorchScalars.Mul(Read("lora_B.bias", dOut), spec.Scaling) : null;    // [d_out], s·bias
        var magnitude = spec.HasMagnitude
            ? ReadAny(["lora_magnitude_vector", "lora_magnitude_vector.weight"], [dOut])  // [d_out]
              ?? throw new AdapterValidationException($"{Describe(record)}: {WeightsFileName} has no tensor '{spec.TensorPrefix}.lora_magnitude_vector'")
            : null;

        Tensor servedA, servedB;
        if (spec.HasDiag)
        {
            var diag = Read("lora_diag", r);                                             // [r] σ
            (servedA, servedB) = KasaDelta.Build(baseWeight, a, b, diag, spec.Scaling, record.Description.KasaTruncation);
        }
        else
        {
            servedA = a;                                                                 // [r, d_in]
            servedB = TorchScalars.Mul(b, spec.Scaling);                                         // [d_out, r] = s·B
        }
        var rowScale = magnitude is null ? null : LoraWeights.ComputeDoraRowScale(magnitude, servedA, servedB, 1f, baseWeight); // [d_out]

        // Always a fresh tensor (copy: true), so the weights never alias a tensor the caller handed in.
        Tensor Keep(Tensor t) => t.to(dtype, device, copy: true).contiguous().DetachFromDisposeScope();
        return new LoraWeights(spec.Layer, spec.Projection, spec.Scaling, Keep(servedA), Keep(servedB),
            bias is null ? null : Keep(bias), magnitude is null ? null : Keep(magnitude), rowScale is null ? null : Keep(rowScale));
    }
}
