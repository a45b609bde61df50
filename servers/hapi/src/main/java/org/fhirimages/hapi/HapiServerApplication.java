package org.fhirimages.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.elasticsearch.ElasticsearchRestClientAutoConfiguration;
import org.springframework.boot.autoconfigure.thymeleaf.ThymeleafAutoConfiguration;
import org.springframework.context.annotation.Import;

/**
 * Entry point of the fhir-images HAPI FHIR JPA test server, FHIR R4 or R5 (property
 * {@code hapi.fhir-version}, see {@link FhirVersionImportSelector}).
 *
 * <p>The HAPI configuration classes imported here do the heavy lifting; {@link FhirServerConfig}
 * supplies the handful of beans HAPI expects the application to provide (settings, the JPA
 * entity manager factory, the REST servlet).
 */
@SpringBootApplication(exclude = {
	// hibernate-search pulls in an Elasticsearch client; we use neither.
	ElasticsearchRestClientAutoConfiguration.class,
	// Thymeleaf is on the classpath for HAPI's narratives; we serve no web pages.
	ThymeleafAutoConfiguration.class
})
@Import({
	// JpaR4Config or JpaR5Config (+ SubscriptionTopicConfig): the FhirContext, a DAO + resource
	// provider per resource type, and (via JpaConfig) search, transactions, validation support
	// chain, binary storage interceptor/provider, ...
	FhirVersionImportSelector.class,
	// Defaults JpaConfig leaves to the application: paging provider, no-op fulltext search
	// (hibernate search is off), stale-search cleanup, resource-count cache.
	HapiJpaConfig.class,
	// Batch2 job framework: JPA services (reindex, expunge, merge, ...) depend on its coordinator.
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	ThreadPoolFactoryConfig.class,
	// Subscriptions: submitter (matches writes, activates Subscription resources), processor
	// (registry + delivery, e.g. REST hooks) and the in-memory channels between them.
	SubscriptionSubmitterConfig.class,
	SubscriptionProcessorConfig.class,
	SubscriptionChannelConfig.class
})
public class HapiServerApplication {

	public static void main(String[] args) {
		SpringApplication.run(HapiServerApplication.class, args);
	}
}
