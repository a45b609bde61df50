package org.fhirimages.hapi;

import ca.uhn.fhir.jpa.packages.IPackageInstallerSvc;
import ca.uhn.fhir.jpa.packages.PackageInstallOutcomeJson;
import ca.uhn.fhir.jpa.packages.PackageInstallationSpec;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarArchiveInputStream;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.SmartInitializingSingleton;
import org.springframework.core.env.Environment;
import org.springframework.stereotype.Component;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.zip.GZIPInputStream;

/**
 * Installs a FHIR NPM package (an implementation guide package, such as the one
 * {@code fhir-images profiles build} makes) named by the property {@code hapi.ig-package}
 * (hapi.sh passes {@code HAPI_IG_PACKAGE}) when the server starts, before it serves requests:
 * its code systems, value sets and structure definitions become resources of the server, with
 * the ids they have in the package, and {@code $validate} uses them at once.
 *
 * <p>Nothing is fetched: the package's dependencies (the FHIR core package) are not installed,
 * since the server has the core definitions already. A package already installed under the same
 * name and version is installed again, so that a rebuilt package replaces what an earlier start
 * installed. A package that cannot be installed stops the server: a server that does not have
 * the profiles it was asked to load would validate against nothing.
 */
@Component
public class IgPackageLoader implements SmartInitializingSingleton {

	static final String PROPERTY = "hapi.ig-package";
	/** A package larger than this is refused (the fhir-images package is well under 1 MB). */
	static final long MAX_BYTES = 64L * 1024 * 1024;

	private static final Logger LOG = LoggerFactory.getLogger(IgPackageLoader.class);

	private final Environment environment;
	private final IPackageInstallerSvc installer;

	public IgPackageLoader(Environment environment, IPackageInstallerSvc installer) {
		this.environment = environment;
		this.installer = installer;
	}

	@Override
	public void afterSingletonsInstantiated() {
		String location = environment.getProperty(PROPERTY, "").trim();
		if (location.isEmpty()) {
			return;
		}
		Path path = Path.of(location);
		try {
			long size = Files.size(path);
			if (size > MAX_BYTES) {
				throw new IllegalStateException(PROPERTY + ": " + path + " is over " + MAX_BYTES + " bytes");
			}
			byte[] contents = Files.readAllBytes(path);
			JsonNode manifest = manifest(contents);
			String name = manifest.path("name").asText("");
			String version = manifest.path("version").asText("");
			if (name.isEmpty() || version.isEmpty()) {
				throw new IllegalStateException(PROPERTY + ": " + path + " has no package/package.json with name and version");
			}
			PackageInstallationSpec spec = new PackageInstallationSpec()
					.setName(name)
					.setVersion(version)
					.setPackageContents(contents)
					.setInstallMode(PackageInstallationSpec.InstallModeEnum.STORE_AND_INSTALL)
					.setFetchDependencies(false)
					// One version of each canonical URL, under the id it has in the package (the
					// default, MULTI_VERSION, stores each under a server-assigned id instead).
					.setVersionPolicy(PackageInstallationSpec.VersionPolicyEnum.SINGLE_VERSION);
			spec.setReloadExisting(true);
			// A package stored by an earlier start under the same name and version may hold other
			// content: remove it from the package store so that this one is stored and installed.
			installer.uninstall(new PackageInstallationSpec().setName(name).setVersion(version));
			long started = System.currentTimeMillis();
			PackageInstallOutcomeJson outcome = installer.install(spec);
			LOG.info("Installed FHIR package {}#{} from {} in {} ms: {}",
					name, version, path, System.currentTimeMillis() - started,
					outcome.getResourcesInstalled());
		} catch (IOException e) {
			throw new IllegalStateException(PROPERTY + ": cannot read the package " + path + ": " + e, e);
		}
	}

	/** package/package.json of a gzipped tar. */
	static JsonNode manifest(byte[] contents) throws IOException {
		try (InputStream gz = new GZIPInputStream(new ByteArrayInputStream(contents));
				TarArchiveInputStream tar = new TarArchiveInputStream(gz)) {
			TarArchiveEntry entry;
			while ((entry = tar.getNextEntry()) != null) {
				if (entry.isFile() && "package/package.json".equals(entry.getName())) {
					if (entry.getSize() > 1024 * 1024) {
						throw new IOException("package/package.json is over 1 MB");
					}
					return new ObjectMapper().readTree(tar.readNBytes((int) entry.getSize()));
				}
			}
		}
		throw new IOException("no package/package.json in the package");
	}
}
