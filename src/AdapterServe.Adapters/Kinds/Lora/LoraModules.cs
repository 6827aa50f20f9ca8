using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>
/// The loaded modules of one LoRA-family adapter: a <see cref="LoraWeights"/> per adapted (layer, projection). LoRA,
/// rsLoRA, DoRA and KaSA all end up as <c>ΔW = B·A</c> per module (see <see cref="LoraWeights"/> for the scaling
/// convention), plus DoRA's magnitude. Owns its tensors.
/// </summary>
public sealed class LoraModules : IAdapterModules
{
    private readonly Dictionary<(int Layer, Projection Projection), LoraWeights> _modules;

    private readonly AdapterRecord? _record;     // the stored version (to find its weights held by a mixer); null when built from tensors at hand

    private LoraModules(Dictionary<(int, Projection), LoraWeights> modules, AdapterRecord? record)
    {
        _modules = modules;
        _record = record;
        Bytes = modules.Values.Sum(m => m.Bytes);
        Shared = modules.Values.Select(m => m.Storage).OfType<SharedStorage>().Distinct().ToList();
        MaxRank = modules.Count == 0 ? 0 : modules.Values.Max(m => m.Rank);
        IsPlainDelta = modules.Values.All(m => !m.IsDora && m.Bias is null);
    }

    public long Bytes { get; }
    /// <summary>The mixers' expert stacks its modules are views of (<see cref="SharedLoraWeights"/>).</summary>
    public IReadOnlyCollection<SharedStorage> Shared { get; }
    /// <summary>Largest served rank of any module (0 without modules).</summary>
    public int MaxRank { get; }
    /// <summary>True when every module is <c>y += x (B·A)ᵀ</c> alone: no DoRA rescaling, no bias.</summary>
    public bool IsPlainDelta { get; }
    public IReadOnlyCollection<LoraWeights> All => _modules.Values;

    /// <summary>The weights for one projection of one layer, or null when the adapter does not target it.</summary>
    public LoraWeights? Module(int layer, Projection projection) => _modules.GetValueOrDefault((layer, projection));

    public bool Targets(int layer, Projection projection) => _modules.ContainsKey((layer, projection));

    /// <summary>
    /// Reads <c>adapter_model.safetensors</c> of <paramref name="record"/>'s directory and builds the served tensors:
    /// computed in float32 on the base weight's device (KaSA's SVD included), stored in <paramref name="dtype"/> on
    /// <paramref name="device"/>. A module a loaded LoRA-Mixer already holds for this version (its expert stack, on this
    /// device in this dtype: <see cref="SharedLoraWeights"/>) is a view of it instead, read from no file. Tensors are
    /// created outside any inference_mode guard. Errors are <see cref="AdapterValidationException"/>s naming the
    /// adapter and the tensor.
    /// </summary>
    public static LoraModules Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype)
    {
        var path = Path.Combine(record.Directory, AdapterFiles.WeightsFileName);
        SafetensorsFile? file = null;                                     // opened for the first module no mixer holds
        try
        {
            return Build(record, key =>
            {
                file ??= SafetensorsFile.Open(path);
                return file.Tensors.ContainsKey(key) ? file.Read(key, ScalarType.Float32, CPU) : null;
            }, baseWeights, device, dtype, shareable: true);
        }
        catch (SafetensorsFormatException e)
        {
            throw new AdapterValidationException($"{Describe(record)}: {e.Message}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new AdapterValidationException($"{Describe(record)}: cannot read {path}: {e.Message}", "adapter_unreadable", 500);
        }
        finally
        {
            file?.Dispose();
        }
    }

    /// <summary>
    /// Builds the served tensors from tensors already at hand (the same work as <see cref="Load"/> without the file).
    /// </summary>
    /// <param name="tensor">The adapter tensor stored under a full key (e.g. <c>{TensorPrefix}.lora_A.weight</c>), or null when
    /// absent. The tensors it returns are only read.</param>
    public static LoraModules FromTensors(AdapterRecord record, Func<string, Tensor?> tensor, IBaseWeights baseWeights, Device device, ScalarType dtype) =>
        Build(record, tensor, baseWeights, device, dtype, shareable: false);

    private static LoraModules Build(AdapterRecord record, Func<string, Tensor?> tensor, IBaseWeights baseWeights, Device device, ScalarType dtype, bool shareable)
    {
        ArgumentNullException.ThrowIfNull(record);
        ArgumentNullException.ThrowIfNull(tensor);
        ArgumentNullException.ThrowIfNull(baseWeights);
        var description = record.Description as LoraDescription
            ?? throw new ArgumentException($"{Describe(record)} is a '{record.Description.Kind}' adapter, not a LoRA one", nameof(record));
        using var inferenceOff = inference_mode(false);
        var modules = new Dictionary<(int, Projection), LoraWeights>();
        try
        {
            foreach (var spec in description.Modules)
            {
                if (modules.ContainsKey((spec.Layer, spec.Projection)))
                    throw new AdapterValidationException($"{Describe(record)}: {ProjectionNames.ModulePath(spec.Layer, spec.Projection)} is listed twice");
                var shared = shareable && !spec.HasMagnitude ? SharedLoraWeights.TryView(record, spec.Layer, spec.Projection, device, dtype) : null;
                modules.Add((spec.Layer, spec.Projection), shared is not null
                    ? LoraWeights.FromShared(spec.Layer, spec.Projection, spec.Scaling, shared)
                    : LoadModule(record, description, spec, tensor, baseWeights.Weight(spec.Layer, spec.Projection), device, dtype));
            }
        }
        catch
        {
            foreach (var m in modules.Values) m.Dispose();
            throw;
        }
        return new LoraModules(modules, shareable ? record : null);
    }

    /// <summary>A copy on <paramref name="device"/>; modules a loaded mixer holds there for this version are views of its stack instead.</summary>
    public IAdapterModules To(Device device)
    {
        var copies = new Dictionary<(int, Projection), LoraWeights>();
        try
        {
            foreach (var (key, module) in _modules)
                copies.Add(key, _record is not null && !module.IsDora && SharedLoraWeights.TryView(_record, key.Item1, key.Item2, device, module.A.dtype) is { } shared
                    ? LoraWeights.FromShared(module.Layer, module.Projection, module.Scaling, shared)
                    : module.To(device));
        }
        catch
        {
            foreach (var m in copies.Values) m.Dispose();
            throw;
        }
        return new LoraModules(copies, _record);
    }

    public void Dispose()
    {
        foreach (var m in _modules.Values) m.Dispose();
    }

    private static string Describe(AdapterRecord record) => $"adapter '{record.Name}' v{record.Version}";

    private static LoraWeights LoadModule(AdapterRecord record, LoraDescription description, AdapterModuleSpec spec, Func<string, Tensor?> tensor, Tensor baseWeight, Device device, ScalarType dtype)
    {
        string module = ProjectionNames.ModulePath(spec.Layer, spec.Projection);
        if (baseWeight.dim() != 2)
            throw new InvalidOperationException($"base weight of {module} must be [d_out, d_in], got [{string.Join(", ", baseWeight.shape)}]");
        long dOut = baseWeight.size(0), dIn = baseWeight.size(1);
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
            ?? throw new AdapterValidationException($"{Describe(record)}: {AdapterFiles.WeightsFileName} has no tensor '{spec.TensorPrefix}.{suffix}'");

        // PEFT stores lora_A [r, d_in] and lora_B [d_out, r] whatever fan_in_fan_out says: the flag only tells that the
        // BASE layer (GPT-2 Conv1D) stores its weight as [d_in, d_out]. Our base weights are always [d_out, d_in], so the
        // delta B·A is applied as is; a merge into a fan_in_fan_out base would transpose ΔW.
        var a = Read("lora_A.weight", r, dIn);                                           // [r, d_in]
        var b = Read("lora_B.weight", dOut, r);                                          // [d_out, r]
        var bias = spec.HasBias ? TorchScalars.Mul(Read("lora_B.bias", dOut), spec.Scaling) : null;    // [d_out], s·bias
        var magnitude = spec.HasMagnitude
            ? ReadAny(["lora_magnitude_vector", "lora_magnitude_vector.weight"], [dOut])  // [d_out]
              ?? throw new AdapterValidationException($"{Describe(record)}: {AdapterFiles.WeightsFileName} has no tensor '{spec.TensorPrefix}.lora_magnitude_vector'")
            : null;

        Tensor servedA, servedB;
        if (spec.HasDiag)
        {
            var diag = Read("lora_diag", r);                                             // [r] σ
            (servedA, servedB) = KasaDelta.Build(baseWeight, a, b, diag, spec.Scaling, description.KasaTruncation);
        }
        else
        {
            servedA = a;                                                                 // [r, d_in]
            servedB = TorchScalars.Mul(b, spec.Scaling);                                              // [d_out, r] = s·B
        }
        var rowScale = magnitude is null ? null : LoraWeights.ComputeDoraRowScale(magnitude, servedA, servedB, 1f, baseWeight); // [d_out]

        // Always a fresh tensor (copy: true), so the weights never alias a tensor the caller handed in.
        Tensor Keep(Tensor t) => t.to(dtype, device, copy: true).contiguous().DetachFromDisposeScope();
        return new LoraWeights(spec.Layer, spec.Projection, spec.Scaling, Keep(servedA), Keep(servedB),
            bias is null ? null : Keep(bias), magnitude is null ? null : Keep(magnitude), rowScale is null ? null : Keep(rowScale));
    }
}
