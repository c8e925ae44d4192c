package dcptckrunner;

import org.junit.platform.engine.Filter;
import org.junit.platform.engine.TestExecutionResult;
import org.junit.platform.engine.discovery.ClassNameFilter;
import org.junit.platform.engine.discovery.DiscoverySelectors;
import org.junit.platform.engine.discovery.PackageNameFilter;
import org.junit.platform.engine.support.descriptor.MethodSource;
import org.junit.platform.launcher.LauncherDiscoveryRequest;
import org.junit.platform.launcher.TestExecutionListener;
import org.junit.platform.launcher.TestIdentifier;
import org.junit.platform.launcher.TestPlan;
import org.junit.platform.launcher.core.LauncherDiscoveryRequestBuilder;
import org.junit.platform.launcher.core.LauncherFactory;

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Stand-in for the DCP TCK's unpublished command-line entry point ({@code DcpTckSuite}).
 *
 * <p>Usage: {@code java -cp <classpath> dcptckrunner.DcpTckMain <dcp-tck.properties>}. Every property of the file
 * becomes a JVM system property and a JUnit configuration parameter (the TCK reads its settings through both). The
 * packages named by {@code dataspacetck.test.package} (comma-separated) are discovered (classes {@code .*Test}) and
 * run with the JUnit Platform Launcher, the DCP system being {@code DcpSystemLauncher}.
 *
 * <p>One machine-readable line per test:
 * {@code TCK-RESULT<TAB>status<TAB>class#method<TAB>display name<TAB>message}, status PASSED, FAILED, ABORTED or
 * SKIPPED, fields escaped (backslash, tab, CR, LF as \\, \t, \r, \n); then {@code TCK-SUMMARY}. Exit code 0 when no
 * test failed and at least one passed, 1 otherwise, 2 on a usage or configuration error.
 */
public final class DcpTckMain {
    private static final String PACKAGES_KEY = "dataspacetck.test.package";
    private static final String DEFAULT_PACKAGE = "org.eclipse.dataspacetck.dcp.verification.presentation.cs";
    private static final String LAUNCHER_KEY = "dataspacetck.launcher";
    private static final String DCP_LAUNCHER = "org.eclipse.dataspacetck.dcp.system.DcpSystemLauncher";

    private DcpTckMain() {
    }

    public static void main(String[] args) {
        if (args.length != 1) {
            System.err.println("usage: dcptckrunner.DcpTckMain <dcp-tck.properties>");
            System.exit(2);
        }
        Map<String, String> config;
        try {
            config = load(args[0]);
        } catch (IOException e) {
            System.err.println("cannot read TCK configuration " + args[0] + ": " + e);
            System.exit(2);
            return;
        }
        config.putIfAbsent(LAUNCHER_KEY, DCP_LAUNCHER);
        config.putIfAbsent("dataspacetck.ansi", "false");
        config.forEach(System::setProperty);

        var listener = new ResultListener(System.out);
        LauncherFactory.create().execute(request(config), listener);

        System.out.printf("TCK-SUMMARY\tpassed=%d\tfailed=%d\tskipped=%d%n",
                listener.passed, listener.failed, listener.skipped);
        System.out.flush();
        System.exit(listener.failed == 0 && listener.passed > 0 ? 0 : 1);
    }

    private static Map<String, String> load(String file) throws IOException {
        var properties = new Properties();
        try (var reader = new InputStreamReader(new FileInputStream(file), StandardCharsets.UTF_8)) {
            properties.load(reader);
        }
        var map = new HashMap<String, String>();
        for (var name : properties.stringPropertyNames()) {
            map.put(name, properties.getProperty(name).trim());
        }
        return map;
    }

    private static LauncherDiscoveryRequest request(Map<String, String> config) {
        var packages = new ArrayList<String>();
        for (var p : config.getOrDefault(PACKAGES_KEY, DEFAULT_PACKAGE).split(",")) {
            if (!p.isBlank()) {
                packages.add(p.trim());
            }
        }
        List<Filter<?>> filters = new ArrayList<>();
        filters.add(ClassNameFilter.includeClassNamePatterns(".*Test"));
        // selectPackage also finds sub-packages; keep exactly the packages asked for
        filters.add(ClassNameFilter.includeClassNamePatterns(
                packages.stream().map(p -> p.replace(".", "\\.") + "\\.[^.]+").toArray(String[]::new)));
        filters.add(PackageNameFilter.includePackageNames(packages));
        var builder = LauncherDiscoveryRequestBuilder.request();
        packages.forEach(p -> builder.selectors(DiscoverySelectors.selectPackage(p)));
        return builder.filters(filters.toArray(new Filter<?>[0])).configurationParameters(config).build();
    }

    /**
     * Prints one result line per test. Tests below a failed container (e.g. a failing class-level setup) never get an
     * executionFinished event; they are reported as failed with the container's error.
     */
    private static final class ResultListener implements TestExecutionListener {
        private final PrintStream out;
        private final Set<String> reported = ConcurrentHashMap.newKeySet();
        private TestPlan plan;
        int passed;
        int failed;
        int skipped;

        ResultListener(PrintStream out) {
            this.out = out;
        }

        @Override
        public void testPlanExecutionStarted(TestPlan testPlan) {
            this.plan = testPlan;
        }

        @Override
        public void executionSkipped(TestIdentifier id, String reason) {
            if (id.isTest()) {
                report(id, "SKIPPED", reason);
            } else {
                plan.getDescendants(id).stream().filter(TestIdentifier::isTest)
                        .forEach(t -> report(t, "SKIPPED", reason));
            }
        }

        @Override
        public void executionFinished(TestIdentifier id, TestExecutionResult result) {
            var message = result.getThrowable().map(ResultListener::describe).orElse("");
            if (id.isTest()) {
                report(id, result.getStatus().name(), message);
            } else if (result.getStatus() != TestExecutionResult.Status.SUCCESSFUL) {
                plan.getDescendants(id).stream().filter(TestIdentifier::isTest)
                        .forEach(t -> report(t, "FAILED", "container " + id.getDisplayName() + " failed: " + message));
            }
        }

        private synchronized void report(TestIdentifier id, String status, String message) {
            if (!reported.add(id.getUniqueId())) {
                return;
            }
            switch (status) {
                case "SUCCESSFUL" -> {
                    status = "PASSED";
                    passed++;
                }
                case "SKIPPED" -> skipped++;
                default -> failed++;
            }
            var where = id.getSource()
                    .filter(MethodSource.class::isInstance)
                    .map(MethodSource.class::cast)
                    .map(m -> m.getClassName() + "#" + m.getMethodName())
                    .orElse(id.getUniqueId());
            out.println("TCK-RESULT\t" + status + "\t" + escape(where) + "\t" + escape(id.getDisplayName()) + "\t"
                    + escape(message));
            out.flush();
        }

        private static String describe(Throwable t) {
            var text = new StringBuilder(t.getClass().getSimpleName()).append(": ").append(t.getMessage());
            var cause = t.getCause();
            var depth = 0;
            while (cause != null && cause != t && depth++ < 5) {
                var last = String.valueOf(t.getMessage());
                if (cause.getMessage() == null || !last.contains(cause.getMessage())) {
                    text.append(" | caused by ").append(cause.getClass().getSimpleName()).append(": ")
                            .append(cause.getMessage());
                }
                t = cause;
                cause = cause.getCause();
            }
            return text.toString();
        }

        private static String escape(String s) {
            if (s == null) {
                return "";
            }
            return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n");
        }
    }
}
