using Microsoft.Extensions.Logging;

namespace AdapterServe.Bench;

/// <summary>Engine log lines at or above a level, written to the progress stream (stderr).</summary>
internal sealed class ProgressLoggerProvider(TextWriter writer, LogLevel minimum) : ILoggerProvider
{
    public ILogger CreateLogger(string categoryName) => new ProgressLogger(writer, minimum);
    public void Dispose() { }

    private sealed class ProgressLogger(TextWriter writer, LogLevel minimum) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= minimum && logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel)) return;
            lock (writer) writer.WriteLine($"engine {logLevel.ToString().ToLowerInvariant()}: {formatter(state, exception)}{(exception is null ? "" : " — " + exception.Message)}");
        }
    }
}
