using System.Globalization;
using AdapterServe.Adapters.Kinds.Smore;
using AdapterServe.Modeling;

namespace AdapterServe.Adapters
{
    /// <summary>The name S'MoRE shows in the API and the manifest.</summary>
    public readonly partial record struct AdapterKind
    {
        public static readonly AdapterKind Smore = new("smore");
    }
}

namespace AdapterServe.Adapters.Kinds.Smore
{
    /// <summary>One S'MoRE-adapted projection as validated: where its tensors are in the file.</summary>
    /// <param name="InFeatures">d_in of the base projection.</param>
    /// <param name="OutFeatures">d_out of the base projection.</param>
    /// <param name="TensorPrefix">e.g. <c>base_model.model.model.layers.0.mlp.up_proj</c>.</param>
    public sealed record SmoreModuleSpec(int Layer, Projection Projection, int InFeatures, int OutFeatures, string TensorPrefix);

    /// <summary>What a validated S'MoRE directory holds. Plain data: no tensors.</summary>
    public sealed record SmoreDescription(SmoreConfig Config, IReadOnlyList<SmoreModuleSpec> Modules, long WeightBytes)
        : AdapterDescription(AdapterKind.Smore, WeightBytes)
    {
        public override IAdapterKindHandler Handler => SmoreKind.Instance;

        /// <summary>The largest expert rank r_l.</summary>
        public override int MaxRank => Config.ExpertDims.Max();

        public override IReadOnlyList<string> TargetModules => Modules.Select(m => m.Projection.ShortName()).Distinct().ToList();

        public override IReadOnlyList<AdapterModuleSummary> ModuleSummaries
        {
            get
            {
                static string List<T>(IEnumerable<T> values) => string.Join(",", values.Select(v => Convert.ToString(v, CultureInfo.InvariantCulture)));
                var details = new Dictionary<string, object>
                {
                    ["levels"] = Config.Levels,
                    ["experts"] = Config.NumExperts.Sum(),
                    // Leaf paths a token is routed through: Π f_l (the dense gate uses every expert).
                    ["top_k"] = Config.PathsAt(0),
                    ["num_experts"] = List(Config.NumExperts),
                    ["num_active"] = List(Enumerable.Range(0, Config.Levels).Select(Config.FanOut)),
                    ["expert_dims"] = List(Config.ExpertDims),
                    ["scaling"] = List(Enumerable.Range(0, Config.Levels).Select(Config.Scaling)),
                    ["gate_type"] = Config.GateType switch { SmoreGateType.Switch => "switch", SmoreGateType.NoisyTopK => "noisy_topk", _ => "dense" },
                    ["expert_act_fn"] = Config.ExpertActivation.ToString().ToLowerInvariant(),
                };
                return Modules.Select(m => new AdapterModuleSummary(m.Layer, m.Projection, MaxRank, details)).ToList();
            }
        }

        /// <summary>The accounting's expert labels <c>l&lt;level&gt;.&lt;index&gt;</c>, leaf level first.</summary>
        public override IReadOnlyList<string> Experts => ExpertLabels;

        /// <summary>Leaf paths each token is routed through: Π f_l (every expert for the dense gate).</summary>
        public override int? TopK => Config.PathsAt(0);

        /// <summary>Expert labels of one module in the accounting's order: <c>l&lt;level&gt;.&lt;index&gt;</c>, leaf level first.</summary>
        public IReadOnlyList<string> ExpertLabels =>
            Enumerable.Range(0, Config.Levels).SelectMany(l => Enumerable.Range(0, Config.NumExperts[l]).Select(e => $"l{l}.{e}")).ToArray();
    }
}
