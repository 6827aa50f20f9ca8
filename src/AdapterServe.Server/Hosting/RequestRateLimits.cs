using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Threading.RateLimiting;
using AdapterServe.Server.OpenAI;
using Microsoft.AspNetCore.RateLimiting;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Hosting;

/// <summary>
/// Per-client request rate limit on <c>/v1/*</c> (configuration section <c>Server:RateLimit</c>); off by default.
/// A client is its API key when <c>--api-key</c> keys are configured and it presents one, otherwise its IP address.
/// </summary>
public sealed class RateLimitOptions
{
    public const string Section = "Server:RateLimit";

    /// <summary>Requests per minute per client (<c>--rate-limit-rpm</c>); 0 = no limit.</summary>
    public int RequestsPerMinute { get; set; }

    /// <summary>Requests a client may make at once after being idle (<c>--rate-limit-burst</c>); 0 = <see cref="RequestsPerMinute"/>.</summary>
    public int Burst { get; set; }

    public bool Enabled => RequestsPerMinute > 0;
}

internal sealed class RateLimitOptionsValidator : IValidateOptions<RateLimitOptions>
{
    public ValidateOptionsResult Validate(string? name, RateLimitOptions o)
    {
        var errors = new List<string>();
        if (o.RequestsPerMinute < 0) errors.Add($"{RateLimitOptions.Section}:RequestsPerMinute (--rate-limit-rpm) must be 0 (off) or positive, got {o.RequestsPerMinute}.");
        if (o.Burst < 0) errors.Add($"{RateLimitOptions.Section}:Burst (--rate-limit-burst) must be 0 (= the rate) or positive, got {o.Burst}.");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}

/// <summary>
/// ASP.NET Core's rate limiter as the server uses it: one token bucket per client (<see cref="RateLimitOptions"/>),
/// refilled at the configured rate, and a refusal as 429 <c>rate_limit_exceeded</c> in the OpenAI error shape with
/// <c>Retry-After</c> (seconds until the client's next request is admitted).
/// </summary>
public static class RequestRateLimits
{
    public static IServiceCollection AddRequestRateLimits(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddSingleton<IValidateOptions<RateLimitOptions>, RateLimitOptionsValidator>();
        services.AddOptions<RateLimitOptions>().Bind(configuration.GetSection(RateLimitOptions.Section)).ValidateOnStart();
        services.AddRateLimiter(_ => { });
        services.AddOptions<RateLimiterOptions>().Configure<IOptions<RateLimitOptions>, IOptions<ServerOptions>>((limiter, rate, server) =>
        {
            if (!rate.Value.Enabled) return;
            var clients = new ClientIdentity(server.Value.EffectiveApiKeys);
            var bucket = Bucket(rate.Value);
            limiter.GlobalLimiter = PartitionedRateLimiter.Create<HttpContext, string>(http =>
                http.Request.Path.StartsWithSegments("/v1")
                    ? RateLimitPartition.GetTokenBucketLimiter(clients.Of(http), _ => bucket)
                    : RateLimitPartition.GetNoLimiter(""));
            limiter.OnRejected = RejectAsync;
        });
        return services;
    }

    /// <summary>The rate limiter in the pipeline (a no-op while <see cref="RateLimitOptions.RequestsPerMinute"/> is 0).</summary>
    public static WebApplication UseRequestRateLimits(this WebApplication app)
    {
        app.UseRateLimiter();
        return app;
    }

    /// <summary>
    /// <see cref="RateLimitOptions.Burst"/> tokens, refilled at exactly the configured rate: one token every 60 s / rpm up
    /// to 60 rpm, above it rpm/g tokens every 60/g s (g = gcd(rpm, 60)). No queue: a request beyond the bucket is refused at once.
    /// </summary>
    private static TokenBucketRateLimiterOptions Bucket(RateLimitOptions o)
    {
        int perMinute = o.RequestsPerMinute;
        int g = perMinute <= 60 ? perMinute : Gcd(perMinute, 60);
        return new TokenBucketRateLimiterOptions
        {
            TokenLimit = o.Burst > 0 ? o.Burst : perMinute,
            TokensPerPeriod = perMinute / g,
            ReplenishmentPeriod = TimeSpan.FromSeconds(60.0 / g),
            QueueLimit = 0,
            AutoReplenishment = true,
        };
    }

    private static int Gcd(int a, int b) => b == 0 ? a : Gcd(b, a % b);

    private static async ValueTask RejectAsync(OnRejectedContext context, CancellationToken cancellationToken)
    {
        var http = context.HttpContext;
        int seconds = context.Lease.TryGetMetadata(MetadataName.RetryAfter, out TimeSpan retryAfter)
            ? Math.Max(1, (int)Math.Ceiling(retryAfter.TotalSeconds))
            : 60;
        http.Response.Headers.RetryAfter = seconds.ToString(CultureInfo.InvariantCulture);
        await ApiErrors.WriteAsync(http, new ApiException(StatusCodes.Status429TooManyRequests, "rate_limit_error", "rate_limit_exceeded", null,
            $"Rate limit reached: this server admits {RateOf(http)} requests per minute per client. Retry after {seconds} s."));
    }

    private static string RateOf(HttpContext http) =>
        http.RequestServices.GetRequiredService<IOptions<RateLimitOptions>>().Value.RequestsPerMinute.ToString(CultureInfo.InvariantCulture);

    /// <summary>The partition of a request: a configured API key it presents (by digest, never the key itself), else its IP address.</summary>
    private sealed class ClientIdentity(IReadOnlyList<string> apiKeys)
    {
        private readonly BearerKeys _keys = new(apiKeys);

        public string Of(HttpContext http)
        {
            if (!_keys.IsEmpty && BearerKeys.Presented(http.Request) is { } key && _keys.Contains(key))
                return "key:" + Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(key)));
            return "ip:" + (http.Connection.RemoteIpAddress ?? IPAddress.None);
        }
    }
}
