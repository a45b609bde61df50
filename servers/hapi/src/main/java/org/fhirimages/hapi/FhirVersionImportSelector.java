package org.fhirimages.hapi;

import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.r5.JpaR5Config;
import ca.uhn.fhir.jpa.topic.SubscriptionTopicConfig;
import org.springframework.context.EnvironmentAware;
import org.springframework.context.annotation.ImportSelector;
import org.springframework.core.env.Environment;
import org.springframework.core.type.AnnotationMetadata;

import java.util.Locale;

/**
 * Imports the HAPI JPA configuration of the FHIR version named by {@code hapi.fhir-version}
 * ({@code R4}, the default, or {@code R5}). One jar serves both versions; a database belongs to
 * the version that created it (hapi.sh keeps a marker next to it).
 */
public class FhirVersionImportSelector implements ImportSelector, EnvironmentAware {

	static final String PROPERTY = "hapi.fhir-version";

	private Environment environment;

	@Override
	public void setEnvironment(Environment environment) {
		this.environment = environment;
	}

	@Override
	public String[] selectImports(AnnotationMetadata importingClassMetadata) {
		String version = environment.getProperty(PROPERTY, "R4").trim().toUpperCase(Locale.ROOT);
		return switch (version) {
			// FHIR R4 context, a DAO + resource provider per R4 resource type, and (via JpaConfig)
			// search, transactions, validation support chain, binary storage, ...
			case "R4" -> new String[] {JpaR4Config.class.getName()};
			// The same for R5, plus topic-based subscriptions (SubscriptionTopic resources and
			// Subscriptions that name a topic), which is how R5 subscribes.
			case "R5" -> new String[] {JpaR5Config.class.getName(), SubscriptionTopicConfig.class.getName()};
			default -> throw new IllegalStateException(
					PROPERTY + " must be R4 or R5, got '" + version + "'");
		};
	}
}
