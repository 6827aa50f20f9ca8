using System.Globalization;
using System.Text.Json.Nodes;

namespace AdapterServe.Bench;

/// <summary>
/// The command line: <c>&lt;scenario&gt; [--option value]...</c>. Options left out take the scenario's default,
/// or its minimal size under <c>--quick</c>; the resolved values are recorded in the report's settings.
/// </summary>
public sealed class BenchOptions
{
    public static readonly string[] Scenarios = ["decode", "prefill", "adapters", "load", "soak", "serve"];

    public const string Usage = """
        usage: dotnet run -c Release --project src/AdapterServe.Bench -- <scenario> [options]

        scenarios (engine in-process): decode | prefill | adapters | load | soak
        scenario (HTTP load generator): serve --url http://127.0.0.1:PORT

        common:   --json FILE  --repeats N (3; serve 1)  --warmup N (1)  --quick  --seed N  --timeout-s S  --verbose
        model:    --model-config tiny|stories260K|135m|1b|PATH/config.json (135m)  --cache-dir DIR (.bench-cache)
                  --dtype float32|bfloat16  --device cpu|cuda[:N]  --threads N (torch intra-op threads)
        decode:   --batches 1,4,16,32  --max-tokens 64  --prompt-tokens 16  --temperature T (0: greedy)
        prefill:  --prompt-lengths 128,512
        adapters: --batches 1,16,32  --cases NAME,...  --device-cache 32  --max-tokens 64
        load:     --registered 1000  --device-cache 32  --load-samples 100  --distinct-files 64  --warmup N (2 x device cache)
        soak:     --generations 2000  --concurrency 8  --soak-adapters 8  --device-cache 4  --max-tokens 16
                  --churn-cycles 1000 (unload + load + replace of an adapter, spread over the run)
        serve:    --url URL  --api-key KEY  --concurrency 32  --requests 200  --max-tokens 128  --adapters a,b,c
                  --model NAME  --distribution uniform|zipf:S  --prompt-words 32  --ignore-eos  --timeout-s 600
        """;

    public required string Scenario { get; init; }
    public string ModelConfig { get; private set; } = "135m";
    public string CacheDir { get; private set; } = ".bench-cache";
    public string Dtype { get; private set; } = "float32";
    public string Device { get; private set; } = "cpu";
    public int? Threads { get; private set; }
    public int Seed { get; private set; } = 1234;
    public bool Quick { get; private set; }
    public bool Verbose { get; private set; }
    public string? JsonPath { get; private set; }
    public string? Url { get; private set; }
    public string? ApiKey { get; private set; }
    public string? ServedModel { get; private set; }
    public IReadOnlyList<string> Adapters { get; private set; } = [];
    public IReadOnlyList<string>? Cases { get; private set; }
    public string Distribution { get; private set; } = "uniform";
    public bool IgnoreEos { get; private set; }
    /// <summary>decode: 0 = greedy (default); above 0, each request samples at this temperature (seeded) over the whole vocabulary.</summary>
    public float Temperature { get; private set; }

    private int? _repeats, _warmup, _maxTokens, _promptTokens, _registered, _deviceCache, _loadSamples, _distinctFiles,
        _generations, _concurrency, _soakAdapters, _churnCycles, _requests, _promptWords;
    private IReadOnlyList<int>? _batches, _promptLengths;
    private double? _timeout;

    private bool Serve => Scenario == "serve";
    private int Pick(int? given, int full, int quick) => given ?? (Quick ? quick : full);

    public int Repeats => Pick(_repeats, Serve ? 1 : 3, 1);
    /// <summary>Unrecorded passes; for <c>load</c>, unrecorded cold loads (default: twice the device cache, so samples see a process that has rotated adapters through it).</summary>
    public int Warmup => Scenario == "load" ? _warmup ?? 2 * DeviceCache : Pick(_warmup, 1, 1);
    public IReadOnlyList<int> Batches => _batches ?? (Scenario == "adapters" ? (Quick ? [1, 4] : [1, 16, 32]) : (Quick ? [1, 2] : [1, 4, 16, 32]));
    public IReadOnlyList<int> PromptLengths => _promptLengths ?? (Quick ? [16, 32] : [128, 512]);
    public int MaxTokens => Scenario switch
    {
        "serve" => Pick(_maxTokens, 128, 8),
        "soak" => Pick(_maxTokens, 16, 3),
        "prefill" or "load" => Pick(_maxTokens, 1, 1),
        _ => Pick(_maxTokens, 64, 4),
    };
    public int PromptTokens => Pick(_promptTokens, 16, 8);
    public int Registered => Pick(_registered, 1000, 6);
    public int DeviceCache => Scenario switch
    {
        "soak" => Pick(_deviceCache, 4, 2),
        "adapters" => Pick(_deviceCache, 32, 4),
        _ => Pick(_deviceCache, 32, 2),
    };
    public int LoadSamples => Pick(_loadSamples, 100, 4);
    public int DistinctFiles => Pick(_distinctFiles, 64, 4);
    public int Generations => Pick(_generations, 2000, 20);
    public int Concurrency => Pick(_concurrency, Serve ? 32 : 8, 4);
    public int SoakAdapters => Pick(_soakAdapters, 8, 2);
    public int ChurnCycles => Pick(_churnCycles, 1000, 4);
    public int Requests => Pick(_requests, 200, 8);
    public int PromptWords => Pick(_promptWords, 32, 8);
    public double TimeoutSeconds => _timeout ?? (Quick ? 120 : Serve ? 600 : 3600);

    public static BenchOptions Parse(IReadOnlyList<string> args)
    {
        if (args.Count == 0 || args[0] is "-h" or "--help" or "help") throw new UsageException("no scenario given");
        string scenario = args[0];
        if (!Scenarios.Contains(scenario)) throw new UsageException($"unknown scenario '{scenario}' (one of: {string.Join(", ", Scenarios)})");
        var o = new BenchOptions { Scenario = scenario };
        for (int i = 1; i < args.Count; i++)
        {
            string arg = args[i];
            if (!arg.StartsWith("--", StringComparison.Ordinal)) throw new UsageException($"unexpected argument '{arg}' (options start with --)");
            string name = arg, value = "";
            int eq = arg.IndexOf('=');
            bool inline = eq > 2;
            if (inline) (name, value) = (arg[..eq], arg[(eq + 1)..]);
            string Value()
            {
                if (inline) return value;
                if (i + 1 >= args.Count) throw new UsageException($"option {name} needs a value");
                return args[++i];
            }
            int Int(int min = 1)
            {
                string v = Value();
                if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) || n < min)
                    throw new UsageException($"option {name} needs a whole number >= {min}, not '{v}'");
                return n;
            }
            IReadOnlyList<int> Ints()
            {
                string v = Value();
                var list = new List<int>();
                foreach (var part in v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                    list.Add(int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n >= 1
                        ? n : throw new UsageException($"option {name} needs a comma-separated list of whole numbers >= 1, not '{v}'"));
                return list.Count > 0 ? list.Distinct().Order().ToList() : throw new UsageException($"option {name} needs at least one number");
            }
            IReadOnlyList<string> Names() => Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

            switch (name)
            {
                case "--model-config": o.ModelConfig = Value(); break;
                case "--cache-dir": o.CacheDir = Value(); break;
                case "--dtype": o.Dtype = Value(); break;
                case "--device": o.Device = Value(); break;
                case "--threads": o.Threads = Int(); break;
                case "--seed": o.Seed = Int(0); break;
                case "--quick": o.Quick = true; break;
                case "--verbose": o.Verbose = true; break;
                case "--json": o.JsonPath = Value(); break;
                case "--repeats": o._repeats = Int(); break;
                case "--warmup": o._warmup = Int(0); break;
                case "--batches": o._batches = Ints(); break;
                case "--max-tokens": o._maxTokens = Int(); break;
                case "--prompt-tokens": o._promptTokens = Int(); break;
                case "--prompt-lengths": o._promptLengths = Ints(); break;
                case "--cases": o.Cases = Names(); break;
                case "--registered": o._registered = Int(); break;
                case "--device-cache": o._deviceCache = Int(); break;
                case "--load-samples": o._loadSamples = Int(); break;
                case "--distinct-files": o._distinctFiles = Int(); break;
                case "--generations": o._generations = Int(); break;
                case "--concurrency": o._concurrency = Int(); break;
                case "--soak-adapters": o._soakAdapters = Int(0); break;
                case "--churn-cycles": o._churnCycles = Int(0); break;
                case "--url": o.Url = Value(); break;
                case "--api-key": o.ApiKey = Value(); break;
                case "--model": o.ServedModel = Value(); break;
                case "--adapters": o.Adapters = Names(); break;
                case "--requests": o._requests = Int(); break;
                case "--prompt-words": o._promptWords = Int(); break;
                case "--distribution": o.Distribution = Value(); break;
                case "--ignore-eos": o.IgnoreEos = true; break;
                case "--temperature":
                    string temp = Value();
                    o.Temperature = float.TryParse(temp, NumberStyles.Float, CultureInfo.InvariantCulture, out float tv) && tv >= 0
                        ? tv : throw new UsageException($"option --temperature needs a number ≥ 0, not '{temp}'");
                    break;
                case "--timeout-s":
                    string t = Value();
                    o._timeout = double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double s) && s > 0
                        ? s : throw new UsageException($"option --timeout-s needs a positive number of seconds, not '{t}'");
                    break;
                default: throw new UsageException($"unknown option '{name}'");
            }
        }
        if (o.Serve && string.IsNullOrWhiteSpace(o.Url)) throw new UsageException("serve needs --url http://127.0.0.1:PORT");
        return o;
    }

    /// <summary>The values this scenario actually uses, for the report.</summary>
    public JsonObject ToSettings()
    {
        var s = new JsonObject
        {
            ["quick"] = Quick,
            ["repeats"] = Repeats,
            ["warmup"] = Warmup,
            ["seed"] = Seed,
            ["timeout_s"] = TimeoutSeconds,
            ["max_tokens"] = MaxTokens,
        };
        JsonArray Array<T>(IEnumerable<T> items) => new(items.Select(x => JsonValue.Create(x)).ToArray<JsonNode?>());
        switch (Scenario)
        {
            case "serve":
                s["url"] = Url;
                s["api_key_given"] = ApiKey is not null;
                s["model"] = ServedModel;
                s["adapters"] = Array(Adapters);
                s["concurrency"] = Concurrency;
                s["requests"] = Requests;
                s["distribution"] = Distribution;
                s["prompt_words"] = PromptWords;
                s["ignore_eos"] = IgnoreEos;
                return s;
            case "decode":
                s["batches"] = Array(Batches);
                s["prompt_tokens"] = PromptTokens;
                s["temperature"] = Temperature;
                break;
            case "prefill":
                s["prompt_lengths"] = Array(PromptLengths);
                break;
            case "adapters":
                s["batches"] = Array(Batches);
                s["prompt_tokens"] = PromptTokens;
                s["device_cache"] = DeviceCache;
                s["cases"] = Cases is null ? null : Array(Cases);
                break;
            case "load":
                s["registered"] = Registered;
                s["device_cache"] = DeviceCache;
                s["load_samples"] = LoadSamples;
                s["distinct_files"] = DistinctFiles;
                s["prompt_tokens"] = PromptTokens;
                break;
            case "soak":
                s["generations"] = Generations;
                s["concurrency"] = Concurrency;
                s["soak_adapters"] = SoakAdapters;
                s["churn_cycles"] = ChurnCycles;
                s["device_cache"] = DeviceCache;
                s["prompt_tokens"] = PromptTokens;
                break;
        }
        s["model_config"] = ModelConfig;
        s["cache_dir"] = Path.GetFullPath(CacheDir);
        s["dtype"] = Dtype;
        s["device"] = Device;
        s["threads"] = Threads;
        return s;
    }
}
